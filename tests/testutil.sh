# testutil.sh - what the shell tests share (sourced, not run).

# wait_for FILE PATTERN PID: FILE matches PATTERN within 20 s while PID
# lives; 1 when PID ended or the time ran out.
wait_for() {
    i=0
    until grep -q "$2" "$1" 2>/dev/null; do
        kill -0 "$3" 2>/dev/null || return 1
        i=$((i + 1))
        [ "$i" -le 400 ] || return 1
        sleep 0.05
    done
}
