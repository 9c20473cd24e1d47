# shellcheck shell=sh
# The complete checkpoints of a run: checkpoints.sh RUN_DIR (after lib.sh); `@@checkpoint N` each.
enter_run "$1"
complete_checkpoints | sed 's/^/@@checkpoint /'
