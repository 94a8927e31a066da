#!/usr/bin/env bash
# `make run`: a 2-node Weir sandbox with the demo manifests, then the demo, then how to reach it.
# The sandbox KEEPS RUNNING afterwards (in the background); `make stop` (= `scripts/run.sh stop`
# = `weir sandbox down`) removes it and everything it created.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="$PWD/.venv/bin"
export PATH="$BIN:$PATH"
WEIR="$BIN/weir"

if [[ "${1:-}" == "stop" ]]; then
  exec "$WEIR" sandbox down
fi

# one sandbox at a time: remove a previous one first (no-op when none is running)
"$WEIR" sandbox down >/dev/null
"$WEIR" sandbox up --nodes 2 -f deploy/examples

KUBECONFIG_PATH="$("$WEIR" sandbox status -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["kubeconfig"])')"
NATS_URL="$("$WEIR" sandbox status -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["nats_url"])')"
KUBECTL=("$BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH")
CLUSTER_IP="$("${KUBECTL[@]}" -n demo get service echo -o jsonpath='{.spec.clusterIP}')"

echo
echo "== pods"
"${KUBECTL[@]}" -n demo get pods -o wide
echo
echo "== Service demo/echo has ClusterIP $CLUSTER_IP (TCP 80 -> 8080, UDP 53 -> 5353)"
echo
echo "== 30 TCP connections from demo/client to $CLUSTER_IP:80 (one socket each)"
"$WEIR" sandbox exec demo/client -- weir-probe tcp "$CLUSTER_IP:80" --count 30
echo
echo "== 30 UDP exchanges from demo/client to $CLUSTER_IP:53"
"$WEIR" sandbox exec demo/client -- weir-probe udp "$CLUSTER_IP:53" --count 30

cat <<EOF

The sandbox is still running. Reach it with:
  NATS:        $NATS_URL
  kubeconfig:  $KUBECONFIG_PATH
  kubectl:     .venv/bin/kubectl --kubeconfig $KUBECONFIG_PATH -n demo get pods,svc,endpointslices
  a pod:       .venv/bin/weir sandbox exec demo/client -- weir-probe tcp $CLUSTER_IP:80 --count 100
  status:      .venv/bin/weir sandbox status
  stop:        make stop   (or: .venv/bin/weir sandbox down)
EOF
