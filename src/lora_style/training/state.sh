# shellcheck shell=sh
# The state of one run: state.sh REMOTE_DIR RUN_ID (after lib.sh).
# Prints `@@dir <remote_dir, absolute>` and run_state's @@run line, or @@no_dir / @@no_run_dir.
dir=$(expand_home "$1")
if cd "$dir" 2>/dev/null; then echo "@@dir $(pwd -P)"; else
  echo "@@no_dir"
  exit 0
fi
enter_run "$2"
run_state
