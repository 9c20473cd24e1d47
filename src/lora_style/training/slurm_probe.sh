# shellcheck shell=sh
# What a Slurm cluster offers, for preflight (after lib.sh): slurm_probe.sh
# Prints `@@tool NAME PATH` for each Slurm command found, then (with sinfo) `@@sinfo_rc RC` and
# one `@@node NODE PARTITION AVAIL TIMELIMIT GRES` per node and partition (the default partition
# ends in *), or sinfo's words as @@sinfo_said lines.
for tool in sbatch squeue sinfo scancel; do
  p=$(command -v "$tool" 2>/dev/null) && echo "@@tool $tool $p"
done
command -v sinfo >/dev/null 2>&1 || exit 0
out=$(sinfo -h -N -o '%N %P %a %l %G' 2>&1)
rc=$?
echo "@@sinfo_rc $rc"
if [ $rc = 0 ]; then
  printf '%s\n' "$out" | sed '/^$/d; s/^/@@node /'
else
  printf '%s\n' "$out" | tail -n 3 | sed 's/^/@@sinfo_said /'
fi
