#!/bin/sh
# FLARE entry point. The organisers run, in WORKDIR /workspace:
#   docker container run --gpus all --rm -v $PWD/inputs/:/workspace/inputs/ \
#     -v $PWD/outputs/:/workspace/outputs/ IMAGE /bin/bash -c "sh predict.sh"
# POSIX sh on purpose (they call `sh`). CUDA_VISIBLE_DEVICES is never set here: the
# organisers pick the device, and the challenge rules forbid overriding it.
set -eu
exec /opt/venv/bin/segpipe predict -i /workspace/inputs -o /workspace/outputs "$@"
