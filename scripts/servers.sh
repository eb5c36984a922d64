# Sourced by the backend-chain test scripts: starts `xpupool server`s in the
# background and reads what a client needs to reach them.
#   start_server NAME LOGS ARGS...   runs "$bin" server ARGS... with its state in
#       LOGS/NAME-state and its output in LOGS/NAME-server.{out,err}; once it is
#       up, sets server_pid, server_cert and server_token. Returns non-zero (and
#       prints the server's last words) if it did not start.
# Callers kill "$server_pid" themselves (an EXIT trap).

# Waits until the server whose output is $1 has printed its "token file:" line.
wait_started() {
    for _ in $(seq 150); do grep -q '^token file:' "$1" 2>/dev/null && return 0; sleep 0.1; done
    return 1
}

start_server() {
    local name=$1 logs=$2; shift 2
    "$bin" server --state-dir "$logs/$name-state" "$@" \
        >"$logs/$name-server.out" 2>"$logs/$name-server.err" &
    server_pid=$!
    wait_started "$logs/$name-server.out"
    server_cert=$(sed -n 's/^certificate: //p' "$logs/$name-server.out")
    server_token=$(cat "$logs/$name-state/token" 2>/dev/null)
    if [ -z "$server_cert" ] || [ -z "$server_token" ]; then
        sed 's/^/      | /' "$logs/$name-server.err" | tail -n 20
        return 1
    fi
}
