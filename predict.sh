#!/bin/sh
# FLARE entry point. The organisers run, in WORKDIR /workspace:
#   docker container run --gpus all --rm -v $PWD/inputs/:/workspace/inputs/ \
#     -v $PWD/outputs/:/workspace/outputs/ IMAGE /bin/bash -c "sh predict.sh"
# POSIX sh on purpose (they call `sh`). CUDA_VISIBLE_DEVICES is never set here: the
# organisers pick the device, and the challenge rules forbid overriding it.
set -eu
# Outside the image (`segpipe evaluate efficiency --local predict.sh`) the folders come from
# SEGPIPE_INPUTS / SEGPIPE_OUTPUTS and segpipe from PATH.
SEGPIPE=/opt/venv/bin/segpipe
[ -x "$SEGPIPE" ] || SEGPIPE=segpipe
exec "$SEGPIPE" predict -i "${SEGPIPE_INPUTS:-/workspace/inputs}" -o "${SEGPIPE_OUTPUTS:-/workspace/outputs}" "$@"
