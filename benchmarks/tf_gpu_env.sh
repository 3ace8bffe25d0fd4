# Source this to run TensorFlow 2.21 (built for CUDA 12) on a host whose only CUDA libraries are CUDA 13's pip
# wheels (nvidia/cu13, nvidia/cudnn): how the TensorFlow-on-GPU tables of docs/benchmarks/throughput.md were measured.
#
#   pip install --target "$SITE" tensorflow==2.21.0 nvidia-cuda-runtime-cu12 keras ...   # where pip can download
#   SITE=/tmp/site source benchmarks/tf_gpu_env.sh
#   python -m benchmarks.throughput --data /path/to/data [--precision mixed_float16]
#
# TensorFlow dlopens libcudart.so.12 (the nvidia-cuda-runtime-cu12 wheel, in $SITE), libcublas(Lt).so.12,
# libcufft.so.11, libcusolver.so.11, libcusparse.so.12 and libcudnn.so.9; the CUDA 13 libraries are linked under
# those names (cuBLAS's and cuDNN 9's C APIs are the ones TensorFlow calls; measured working on an H100, driver 580,
# cuDNN 9.19: convolutions, matmuls, XLA and mixed precision). Not a supported setup: install tensorflow[and-cuda]
# where you can.
: "${SITE:?set SITE to the folder TensorFlow was installed into}"
_sp=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
_cu13=$_sp/nvidia/cu13/lib
mkdir -p /tmp/kfacemtl-culib
for _pair in libcublas.so.12:libcublas.so.13 libcublasLt.so.12:libcublasLt.so.13 libcufft.so.11:libcufft.so.12 \
             libcusolver.so.11:libcusolver.so.12 libcusparse.so.12:libcusparse.so.12; do
  [ -e "$_cu13/${_pair#*:}" ] && ln -sf "$_cu13/${_pair#*:}" "/tmp/kfacemtl-culib/${_pair%%:*}"
done
export LD_LIBRARY_PATH=/tmp/kfacemtl-culib:$_cu13:$_sp/nvidia/cudnn/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH} TF_FORCE_GPU_ALLOW_GROWTH=true
export XLA_FLAGS=--xla_gpu_cuda_data_dir=/usr/local/cuda   # libdevice for XLA
