# shellcheck shell=sh
# What a pod has, for preflight and setup:
#   probe.sh REMOTE_DIR LLAMAFACTORY_CLI IMPORTS FOR_SETUP TEMPLATE_DIR [MODULE...]   (after lib.sh)
# IMPORTS: the modules the run needs beyond LLaMA-Factory, space-separated (bitsandbytes deepspeed),
# maybe none; FOR_SETUP is 0 or 1. Prints one `@@key value` line per fact; preflight.py reads them.
# A newline first: whatever the login shell printed on its own before this (a ~/.bashrc that
# echoes) ends there, and preflight.py tells it apart (rsync's protocol cannot pass through it).
printf '\n@@ok\n'
dir=$(expand_home "$1")
cli=$2 imports=$3 for_setup=$4 template_dir=$5
shift 5
p=$(command -v "$cli" 2>/dev/null) || p=""
case $p in
  /*) ;;
  */*) p="$(cd "$(dirname "$p")" && pwd -P)/$(basename "$p")" ;;
  *) p="" ;;
esac
py=""
if [ -n "$p" ] && [ -x "$p" ]; then
  echo "@@cli $p"
  py=$(head -n 1 "$p" | sed -n "s/^#![[:space:]]*//p")
  echo "@@python $py"
  out=$("$p" version 2>&1)
  echo "@@cli_rc $?"
  printf "%s\n" "$out" | sed -n "s/.*[Vv]ersion[[:space:]]\{1,\}v\{0,1\}\([0-9][0-9A-Za-z.+-]*\).*/@@version \1/p" | head -n 1
  printf "%s\n" "$out" | tail -n 12 | sed "s/^/@@cli_out /"
fi
if command -v nvidia-smi >/dev/null 2>&1; then
  out=$(nvidia-smi --query-gpu=index,name,memory.total,memory.free --format=csv,noheader,nounits 2>&1)
  echo "@@nvidia_smi_rc $?"
  printf "%s\n" "$out" | sed "s/^/@@gpu /"
fi
# $py is the interpreter line of llamafactory-cli (maybe `/usr/bin/env python3`): split on purpose.
# `@@import MODULE RC LINE`: LINE is its version when it imports, else the error's last line.
if [ -n "$py" ]; then
  for m in $imports; do
    # shellcheck disable=SC2086
    out=$($py -c "import importlib, sys; print(getattr(importlib.import_module(sys.argv[1]), '__version__', '?'))" "$m" 2>&1)
    rc=$?
    echo "@@import $m $rc $(printf "%s\n" "$out" | tail -n 1)"
  done
fi
command -v tmux >/dev/null 2>&1 && echo "@@tmux $(tmux -V 2>&1)"
command -v setsid >/dev/null 2>&1 && echo "@@setsid"
command -v rsync >/dev/null 2>&1 && echo "@@rsync"
if [ "$for_setup" = 1 ]; then
  command -v apt-get >/dev/null 2>&1 && echo "@@apt_get"
  [ -d "$template_dir" ] && echo "@@template_dir"
  if [ -n "$py" ]; then
    # shellcheck disable=SC2086
    $py -c "import importlib.util as u, sys; print(*[m for m in sys.argv[1:] if u.find_spec(m) is None])" "$@" 2>/dev/null |
      sed "s/^/@@missing_modules /"
  fi
fi
if mkdir -p "$dir" 2>/dev/null && cd "$dir"; then
  echo "@@dir $(pwd -P)"
  df -Pk . | tail -n 1 | awk '{print "@@disk_free_kb " $4}'
else
  echo "@@dir_error"
fi
