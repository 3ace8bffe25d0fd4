"""deploy/: the docker-compose file for TF Serving and its smoke script, checked as far as can be without Docker."""
import re
import subprocess

import yaml
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from helpers import ROOT, tiny_model

DEPLOY = ROOT / "deploy"


def _defaults(text: str) -> str:
    """``${VAR:-default}`` → ``default``, as docker compose does when VAR is unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", text)


def test_compose_serves_an_export_on_cpu_and_gpu_with_its_config_batching_and_warmup(tmp_path):
    from kfacemtl.serving import export_model
    compose = yaml.safe_load(_defaults((DEPLOY / "docker-compose.yml").read_text()))
    services = compose["services"]
    assert set(services) == {"serving-cpu", "serving-gpu"}
    assert services["serving-cpu"]["image"] == "tensorflow/serving:latest"
    assert services["serving-gpu"]["image"] == "tensorflow/serving:latest-gpu"
    assert services["serving-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    base = tmp_path / "saved_models"  # the default MODELS, ../saved_models, seen from deploy/
    export_model(tiny_model(["gender"]), base, "faces", warmup=True)
    for service in services.values():
        assert service["ports"] == ["8500:8500", "8501:8501"]
        (mount,) = service["volumes"]
        host, container, mode = mount.split(":")
        assert host == "../saved_models" and container == "/models" and mode == "ro"
        flags = dict(f[2:].split("=", 1) if "=" in f else (f[2:], True) for f in service["command"])
        assert flags["enable_batching"] and flags["enable_model_warmup"]
        here = {k: base / v.removeprefix("/models/") for k, v in flags.items() if isinstance(v, str)}
        assert here["model_config_file"].is_file() and here["batching_parameters_file"].is_file()
        config = text_format.Parse(here["model_config_file"].read_text(), model_server_config_pb2.ModelServerConfig())
        (model,) = config.model_config_list.config
        assert model.name == "faces" and model.base_path == "/models/faces"  # where the mount puts the export
        assert (base / "faces" / "1" / "assets.extra" / "tf_serving_warmup_requests").is_file()


def test_the_smoke_script_is_valid_bash_and_asks_both_apis():
    script = (DEPLOY / "smoke.sh").read_text()
    assert subprocess.run(["bash", "-n", str(DEPLOY / "smoke.sh")]).returncode == 0
    assert (DEPLOY / "smoke.sh").stat().st_mode & 0o111  # executable
    assert ':8501/v1/models/${name}"' in script  # model status, REST
    assert 'kfacemtl predict --server "${host}:8500"' in script and '--server "${host}:8501" --rest' in script
