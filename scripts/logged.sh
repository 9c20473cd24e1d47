#!/bin/sh
# logged.sh LOG COMMAND [ARG...]
#
# Runs COMMAND with its output (stdout and stderr, as it comes) both on stderr and in LOG, which
# starts empty, and exits with COMMAND's status. When COMMAND fails, the end of LOG is shown again
# under a header naming it, so the cause is the last thing on the screen. Every rule runs its
# command through this (rules/common.smk), so every job logs the same way.
#
# Ctrl-C reaches the whole process group: COMMAND gets it as usual (remote_train says what it
# stopped and exits 130), while the shells here and tee stay up until COMMAND has ended, so its
# last words still reach LOG and the terminal. tee ignores INT, TERM and HUP and ends when the
# pipe closes; the shells trap them with an action (`:`) instead, because a signal ignored here
# would stay ignored in COMMAND (Python then never raises KeyboardInterrupt). After an
# interruption the tail is not shown again: the user knows why it stopped.

if [ "$#" -lt 2 ]; then
    echo "usage: logged.sh LOG COMMAND [ARG...]" >&2
    exit 2
fi
log=$1
shift
tail_lines=40

mkdir -p "$(dirname -- "$log")" && : >"$log" || exit 1

stopped=0
trap 'stopped=1' INT TERM HUP

# POSIX sh has no pipefail: COMMAND's status travels on fd 3 into the command substitution; fd 4 is
# this script's stderr, where tee shows the output. COMMAND gets neither, so a process it leaves
# behind cannot hold the substitution open. Each pipeline part is a subshell, which resets traps:
# each sets its own.
status=$(
    trap : INT TERM HUP
    {
        {
            trap : INT TERM HUP
            "$@" 3>&- 4>&-
            echo "$?" >&3
        } 2>&1 | (
            trap '' INT TERM HUP
            exec tee -a "$log" >&4 3>&-
        )
    } 3>&1 4>&2
)
# No status: the shell around COMMAND was killed outright (SIGKILL); count it as a failure.
status=${status:-1}

if [ "$status" -ne 0 ] && [ "$stopped" -eq 0 ]; then
    {
        echo
        printf "%s\n" "---- $log, its last $tail_lines lines (exit status $status) ----"
        tail -n "$tail_lines" "$log"
        printf "%s\n" "---- end of $log ----"
    } >&2
fi
exit "$status"
