#!/usr/bin/env bash
# selftest.sh - checks the lab scripts themselves (no ucanal needed):
#   1. two all-kernel labs side by side (prefixes st1- and st2-, the second with --offloads off):
#      pod <-> pod ping and HTTP both ways, NodePort via both nodes reaching both pods, the
#      article's conntrack reply tuple, VXLAN on the lab bridge, the pods' routes and neighbours;
#   2. `up` on an existing prefix fails and leaves the lab alone;
#   3. the ucanal-mode plumbing with a stand-in for the ucanal CLI (`run --config`, `--socket S
#      show pods`): config, pid, socket, readiness, SIGTERM on down; and a failing ucanal, after
#      which nothing of the lab is left;
#   4. after `down`: no namespace, process, run dir or socket of these labs remains.
# Usage: netns-scripts/selftest.sh   (root; exit 0 when every check passes)

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
unset LAB_RUN_DIR

_st_fails=0
_st_tmp=$(mktemp -d /tmp/ucanal-lab-selftest.XXXXXX)
ok() { printf 'ok    %s\n' "$*"; }
bad() {
    printf 'FAIL  %s\n' "$*"
    _st_fails=$((_st_fails + 1))
}
check() { # check DESCRIPTION CMD...
    local d=$1
    shift
    if "$@" >"$_st_tmp/out" 2>&1; then ok "$d"; else bad "$d"; sed 's/^/      /' "$_st_tmp/out" | tail -n 5; fi
}
cleanup() {
    local p
    for p in st1- st2- st3-; do lab_use "$p"; lab_down >/dev/null 2>&1 || true; done
    rm -rf "$_st_tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# Stand-in for the ucanal CLI.
cat >"$_st_tmp/ucanal" <<'EOF'
#!/usr/bin/env python3
import os, signal, socket, sys, tomllib
a = sys.argv[1:]
if a[:1] == ["run"]:
    cfg = tomllib.load(open(a[a.index("--config") + 1], "rb"))
    if os.environ.get("FAKE_FAIL"):
        sys.exit("fake ucanal: failing on purpose")
    path = cfg["api"]["socket"]
    signal.signal(signal.SIGTERM, lambda *_: (os.unlink(path), sys.exit(0)))
    s = socket.socket(socket.AF_UNIX); s.bind(path); s.listen()
    print("fake ucanal", cfg["node"]["name"], "ready", flush=True)
    while True:
        s.accept()[0].close()
elif a[:1] == ["--socket"] and a[2:] == ["show", "pods"]:
    socket.socket(socket.AF_UNIX).connect(a[1]); sys.exit(0)
sys.exit(2)
EOF
chmod +x "$_st_tmp/ucanal"

pages() { # pages PREFIX URL N: distinct bodies over N requests from the client
    local i
    for ((i = 0; i < $3; i++)); do ip netns exec "${1}client" curl -s -m 3 "$2"; done | sort -u
}
both_pods() { local p; p=$(pages "$@"); [[ $p == *"ghost-ep1 10.244.1.5"* && $p == *"ghost-ep2 10.244.0.74"* ]]; }
body_is() { [[ $(ip netns exec "$1" curl -s -m 3 "$2") == "$3" ]]; }
ct_remote() { local t; t=$(ip netns exec "$1" conntrack -L 2>/dev/null); grep -qF -- "$2" <<<"$t"; }
neigh_cali() { ip netns exec "$1" ping -c1 -W2 "$2" >/dev/null && ip netns exec "$1" ip neigh show 169.254.1.1 | grep -q 'lladdr ee:ee:ee:ee:ee:ee'; }
vxlan_seen() {
    local f=$_st_tmp/dump
    timeout 8 ip netns exec "${1}lan" tcpdump -i br0 -n -c 2 udp port 8472 >"$f" 2>&1 &
    local t=$!
    sleep 1
    ip netns exec "${1}ghost-ep1" ping -c2 -W1 10.244.0.74 >/dev/null
    wait "$t" || true
    grep -q '172.16.240.131.* > 172.16.240.132.8472' "$f" && grep -q '172.16.240.132.* > 172.16.240.131.8472' "$f"
}
gone() { # gone PREFIX: nothing of the lab is left
    [[ -z $(ip netns list | awk -v p="$1" 'index($1, p) == 1') ]] &&
        ! pgrep -f "/run/ucanal-lab/$1" >/dev/null &&
        [[ ! -e /run/ucanal-lab/$1 ]] && ! compgen -G "/run/ucanal/$1*" >/dev/null &&
        ! ip -br link | grep -q "^lv"
}

echo "== 1. two kernel labs side by side"
lab_use st1-
check "st1- up (kernel, kernel)" lab_up --node1 kernel --node2 kernel
lab_use st2-
check "st2- up (kernel, kernel, offloads off)" lab_up --node1 kernel --node2 kernel --offloads off
for P in st1- st2-; do
    check "$P ghost-ep1 -> ghost-ep2 ping" ip netns exec "${P}ghost-ep1" ping -c2 -W2 10.244.0.74
    check "$P ghost-ep2 -> ghost-ep1 ping" ip netns exec "${P}ghost-ep2" ping -c2 -W2 10.244.1.5
    check "$P ghost-ep1 -> ghost-ep2 http" body_is "${P}ghost-ep1" http://10.244.0.74:2368/ "ghost-ep2 10.244.0.74"
    check "$P ghost-ep2 -> ghost-ep1 http" body_is "${P}ghost-ep2" http://10.244.1.5:2368/ "ghost-ep1 10.244.1.5"
    check "$P ghost-ep1 -> ClusterIP" ip netns exec "${P}ghost-ep1" curl -sf -m 3 http://10.250.0.40:2368/
    check "$P client -> NodePort .131 reaches both pods" both_pods "$P" http://172.16.240.131:31266/ 20
    check "$P client -> NodePort .132 reaches both pods" both_pods "$P" http://172.16.240.132:31266/ 20
    check "$P centos7-1 conntrack: reply src=10.244.0.74 dst=10.244.1.0 sport=2368" ct_remote "${P}centos7-1" "src=10.244.0.74 dst=10.244.1.0 sport=2368"
    check "$P centos7-2 conntrack: reply src=10.244.1.5 dst=10.244.0.0 sport=2368" ct_remote "${P}centos7-2" "src=10.244.1.5 dst=10.244.0.0 sport=2368"
    check "$P VXLAN .131 <-> .132 on br0" vxlan_seen "$P"
    check "$P pod route default via 169.254.1.1" bash -c "ip netns exec ${P}ghost-ep1 ip route | grep -qx 'default via 169.254.1.1 dev eth0 *'"
    check "$P pod neigh 169.254.1.1 = ee:ee:ee:ee:ee:ee" neigh_cali "${P}ghost-ep2" 10.244.1.5
done

echo "== 2. up on an existing prefix"
lab_use st1-
if (lab_up --node1 kernel --node2 kernel) 2>/dev/null; then bad "st1- second up should fail"; else ok "st1- second up fails"; fi
check "st1- still healthy" lab_status

echo "== 3. ucanal plumbing with a stand-in"
lab_use st3-
UCANAL_BIN=$_st_tmp/ucanal
check "st3- up (ucanal, kernel)" lab_up --node1 ucanal --node2 kernel
check "st3- status healthy" lab_status
check "st3- socket listed" bash -c "[[ -S $(lab_socket centos7-1) ]]"
check "st3- config written" grep -q 'netns = "st3-ghost-ep1"' "$LAB_RUN_DIR/centos7-1.toml"
check "st3- down" lab_down
check "st3- gone" gone st3-
export FAKE_FAIL=1
if (lab_up --node1 ucanal --node2 ucanal) >/dev/null 2>&1; then bad "st3- up with a failing ucanal should fail"; else ok "st3- up with a failing ucanal fails"; fi
unset FAKE_FAIL
check "st3- nothing left after the failed up" gone st3-

echo "== 4. down"
for P in st1- st2-; do
    lab_use "$P"
    check "$P down" lab_down
    check "$P gone" gone "$P"
done

if ((_st_fails)); then
    echo "$_st_fails check(s) failed"
    exit 1
fi
echo "all checks passed"
