#!/usr/bin/env bash
# cluster-bench.sh [N...] - cluster figures of the etcd lab (lab.sh up --nodes N --etcd) for
# each N (default 4 8 16 32), one worker per node:
#   join     one more node started -> every other node routes to its pod subnet (s)
#   leave    its lease deleted -> every node dropped the route (s)
#   nodeport `apply` of a NodePort service -> the NodePort answers on every node (s)
#   rss      resident memory per ucanal node (MiB, median)
#   pairs    every pod pinging every other (ok/total)
# Prints a Markdown table. Runs as root; leaves nothing behind (lab.sh down on exit).
set -Eeuo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export LAB_PREFIX=${LAB_PREFIX:-cb-}
BIN=${UCANAL_BIN:-$HERE/../target/release/ucanal}
export UCANAL_BIN=$BIN
RUN=/run/ucanal-lab/$LAB_PREFIX
sizes=("$@")
((${#sizes[@]})) || sizes=(4 8 16 32)

trap '"$HERE/lab.sh" down >/dev/null 2>&1 || true' EXIT

now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc | awk '{printf "%.2f", $1}'; }
sock() { printf '/run/ucanal/%s%s.sock\n' "$LAB_PREFIX" "$1"; }
routes_all() { # routes_all PRESENT|ABSENT SUBNET NODES...: all nodes agree
    local want=$1 sn=$2 n
    shift 2
    for n in "$@"; do
        if "$BIN" --socket "$(sock "$n")" show routes 2>/dev/null | grep -q "^$sn "; then
            [[ $want == PRESENT ]] || return 1
        else
            [[ $want == ABSENT ]] || return 1
        fi
    done
}
wait_for() { # wait_for SECONDS CMD...
    local deadline=$(($(date +%s) + $1))
    shift
    until "$@"; do
        (($(date +%s) < deadline)) || return 1
        sleep 0.05
    done
}
nodeport_all() {
    local n
    for n in "$@"; do
        local ip=172.16.240.$((130 + 10#${n#node}))
        ip netns exec "${LAB_PREFIX}client" curl -s -m 1 -o /dev/null "http://$ip:31999/" || return 1
    done
}

printf '| nodes | join (s) | leave (s) | nodeport (s) | rss/node (MiB) | pairs |\n|---|---|---|---|---|---|\n'
for n in "${sizes[@]}"; do
    "$HERE/lab.sh" up --force --nodes "$n" --etcd >"/tmp/cluster-bench.$LAB_PREFIX.log" 2>&1
    mapfile -t nodes < <(for ((i = 1; i <= n; i++)); do printf 'node%02d\n' "$i"; done)
    # join: node N+1 started -> every other node routes to it
    t=$(now)
    new=$("$HERE/lab.sh" add-node 2>/dev/null | tail -n1)
    sn=10.244.$((10#${new#node})).0/24
    wait_for 60 routes_all PRESENT "$sn" "${nodes[@]}" && join=$(since "$t") || join=timeout
    # leave: the node stopped, then its lease deleted -> every node dropped the route
    pid=$(cat "$RUN/$new.pid")
    kill "$pid"
    wait_for 10 bash -c "! kill -0 $pid 2>/dev/null"
    t=$(now)
    "$HERE/lab.sh" etcdctl del "/coreos.com/network/subnets/${sn/\//-}" >/dev/null
    wait_for 60 routes_all ABSENT "$sn" "${nodes[@]}" && leave=$(since "$t") || leave=timeout
    "$HERE/lab.sh" remove-node "$new" >/dev/null 2>&1
    # nodeport: apply a NodePort service -> it answers on every node
    cat >"$RUN/np.yaml" <<EOF
apiVersion: v1
kind: Service
metadata: {name: bench-np, namespace: default}
spec: {type: NodePort, clusterIP: 10.250.9.9, ports: [{port: 2368, nodePort: 31999, protocol: TCP}]}
---
apiVersion: v1
kind: Endpoints
metadata: {name: bench-np, namespace: default}
subsets: [{addresses: [{ip: 10.244.1.5}], ports: [{port: 2368, protocol: TCP}]}]
EOF
    t=$(now)
    "$BIN" --socket "$(sock node01)" apply -f "$RUN/np.yaml" >/dev/null
    wait_for 60 nodeport_all "${nodes[@]}" && np=$(since "$t") || np=timeout
    rss=$(for x in "${nodes[@]}"; do ps -o rss= -p "$(cat "$RUN/$x.pid")"; done | sort -n | awk '{a[NR]=$1} END {printf "%.1f", a[int((NR+1)/2)]/1024}')
    pairs=$("$HERE/lab.sh" pingall 3 | tail -n1)
    printf '| %s | %s | %s | %s | %s | %s |\n' "$n" "$join" "$leave" "$np" "$rss" "$pairs"
    "$HERE/lab.sh" down >/dev/null 2>&1
done
