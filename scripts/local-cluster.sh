#!/usr/bin/env bash
# A one-node Kubernetes cluster made of binaries built on this machine, inside a network
# namespace of its own, for Kiln's end-to-end tests (scripts/e2e-local.sh):
#
#   scripts/local-cluster.sh up      bring it up (building what is not cached); prints the
#                                    kubeconfig's path on stdout
#   scripts/local-cluster.sh down    stop everything and remove what it made
#   scripts/local-cluster.sh env     print the environment for tests (shell `export`s)
#   scripts/local-cluster.sh exec CMD...   run a command inside the cluster's network
#
# What runs, each process inside the network namespace $KILN_CLUSTER_NETNS (default
# kiln-cluster), which has no link to the host's interfaces and no route off the machine:
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy
#     (iptables mode) and cluster-dns: subcommands of kiln-envtest (scripts/envtest.sh),
#     Kubernetes v1.36.x;
#   containerd 2.4 with runc 1.4 (scripts/node-bins.sh);
#   a CNI bridge (Debian's containernetworking-plugins: bridge, host-local, loopback);
#   two plain-HTTP registries (Debian's docker-registry): `images` (the node's images and
#     the builds' pushes) and `upstream` (library/busybox and the stand-in SBOM generator
#     kiln-e2e/sbom-scanner, which Kiln's docker.io mirror
#     pulls through); containerd reads docker.io from `images`.
# Addresses, all inside the namespace: the node 10.99.0.1 (on its loopback; the API
# server on :6443, the registries on :5001 and :5002, DNS on :53), pods 10.244.0.0/24,
# Services 10.0.0.0/24 (the API server's certificate names 10.0.0.1).
#
# The kubelet runs with `failCgroupV1: false` (this machine mounts cgroup v1), the
# cgroupfs driver, and its pods under the cgroup /kiln-cluster. State, logs and the
# kubeconfig live in $KILN_CLUSTER_DIR (default target/local-cluster).
#
# Needs root, Go (first run), and Debian packages: iproute2 iptables conntrack
# containernetworking-plugins docker-registry skopeo umoci busybox-static git
# libseccomp-dev pkg-config (scripts/install-test-deps.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."

NETNS="${KILN_CLUSTER_NETNS:-kiln-cluster}"
DIR="${KILN_CLUSTER_DIR:-$PWD/target/local-cluster}"
NODE_NAME=kiln-node
NODE_IP=10.99.0.1
POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.0.0.0/24
BRIDGE=kiln-br0
CGROUP_ROOT=/kiln-cluster
IMAGES_PORT=5001
UPSTREAM_PORT=5002
REGISTRY="$NODE_IP:$IMAGES_PORT"
UPSTREAM="$NODE_IP:$UPSTREAM_PORT"
PAUSE_IMAGE="$REGISTRY/kiln-local/pause:3.10"
BUILDER_IMAGE="docker.io/moby/buildkit:v0.26.1-rootless"
USERNS_BUILDER_IMAGE="$REGISTRY/kiln-local/buildkit:v0.26.1-rootless-userns"

log() { printf 'local-cluster: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
elapsed() { echo "$((SECONDS - START))s"; }
START=$SECONDS

in_netns() { nsenter --net="/run/netns/$NETNS" -- "$@"; }

# Starts a server in the namespace's network (and the host's mount namespace, so that
# the kubelet's volume mounts are the ones containerd sees), detached, logging to
# $DIR/logs/NAME.log, its pid in $DIR/pids/NAME.
start() {
  local name="$1"
  shift
  KILN_ENVTEST_PARENT_PID="$(cat "$DIR/pids/holder")" \
    nsenter --net="/run/netns/$NETNS" -- setsid "$@" > "$DIR/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$DIR/pids/$name"
}

wait_for() { # wait_for SECONDS WHAT CMD...
  local limit="$1" what="$2" deadline
  shift 2
  deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "$what did not come up within ${limit}s (logs in $DIR/logs)"
    sleep 0.5
  done
}

check_tools() {
  [ "$(id -u)" -eq 0 ] || die "needs root (network namespaces, mounts, cgroups)"
  local tool
  for tool in ip nsenter iptables conntrack docker-registry skopeo umoci busybox git findmnt; do
    command -v "$tool" >/dev/null || die "$tool not found: run scripts/install-test-deps.sh"
  done
  [ -x /usr/lib/cni/bridge ] || die "no CNI plugins in /usr/lib/cni: apt-get install containernetworking-plugins"
}

binaries() {
  ENVTEST="$(scripts/envtest.sh ensure)" || die "scripts/envtest.sh failed"
  NODE_BIN="$(scripts/node-bins.sh ensure)" || die "scripts/node-bins.sh failed"
  log "binaries ready ($(elapsed)): $ENVTEST, $NODE_BIN"
}

network() {
  ip netns add "$NETNS"
  # The node's address sits on the namespace's loopback (this kernel has no dummy
  # interfaces): local to the node, reached by pods through the bridge's gateway.
  in_netns ip addr add "$NODE_IP/32" dev lo
  in_netns ip link set lo up
  # Pods reach Services through kube-proxy's rules, which must see bridged traffic too.
  in_netns sysctl -q -w net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1 \
    net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
}

pki() {
  "$ENVTEST" pki --dir "$DIR/pki" --server https://127.0.0.1:6443 >/dev/null
  KUBECONFIG_FILE="$DIR/pki/admin.kubeconfig"
}

control_plane() {
  local pki="$DIR/pki"
  start etcd "$ENVTEST" etcd --data-dir "$DIR/etcd" \
    --listen-client-url http://127.0.0.1:2379 --listen-peer-url http://127.0.0.1:2380 \
    --ready-file "$DIR/etcd.ready"
  wait_for 60 etcd test -f "$DIR/etcd.ready"
  start kube-apiserver "$ENVTEST" kube-apiserver \
    --etcd-servers=http://127.0.0.1:2379 \
    --bind-address=0.0.0.0 --advertise-address="$NODE_IP" --secure-port=6443 \
    --cert-dir="$DIR/apiserver-certs" \
    --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --authorization-mode=Node,RBAC --allow-privileged=true \
    --kubelet-preferred-address-types=InternalIP --profiling=false
  wait_for 120 kube-apiserver in_netns "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" get --raw /readyz
  start kube-controller-manager "$ENVTEST" kube-controller-manager \
    --kubeconfig="$pki/kube-controller-manager.kubeconfig" \
    --use-service-account-credentials=true \
    --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
    --leader-elect=false --secure-port=0 --profiling=false
  start kube-scheduler "$ENVTEST" kube-scheduler \
    --kubeconfig="$KUBECONFIG_FILE" --leader-elect=false \
    --bind-address=127.0.0.1 --secure-port=10259 --profiling=false
  log "control plane up ($(elapsed))"
}

registries() {
  local name port
  for name in images upstream; do
    port=$IMAGES_PORT
    [ "$name" = upstream ] && port=$UPSTREAM_PORT
    mkdir -p "$DIR/registry/$name"
    cat > "$DIR/registry/$name.yml" <<EOF
version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $DIR/registry/$name
  delete:
    enabled: true
http:
  addr: 0.0.0.0:$port
EOF
    start "registry-$name" docker-registry serve "$DIR/registry/$name.yml"
    wait_for 30 "registry $name" in_netns bash -c "exec 3<>/dev/tcp/127.0.0.1/$port"
  done
}

images() {
  local work="$DIR/images"
  # skopeo pushes from inside the namespace, where the registries listen.
  KILN_IMAGES_WORK="$work" in_netns scripts/local-images.sh pause "$PAUSE_IMAGE"
  KILN_IMAGES_WORK="$work" in_netns scripts/local-images.sh busybox \
    "$UPSTREAM/library/busybox:1.36" "$UPSTREAM/library/busybox:latest"
  # BuildKit pulls an SBOM generator like a base image: through Kiln's docker.io mirror.
  KILN_IMAGES_WORK="$work" in_netns scripts/local-images.sh sbom-scanner \
    "$UPSTREAM/kiln-e2e/sbom-scanner:1"
  KILN_IMAGES_WORK="$work" in_netns scripts/local-images.sh builder \
    "$REGISTRY/moby/buildkit:v0.26.1-rootless" "$NODE_BIN"
  # The same builder for user-namespaced pods (hostUsers: false), whose 65,536 IDs do not
  # reach moby/buildkit's subordinate range.
  KILN_BUILDER_SUBIDS=1001:64535 KILN_IMAGES_WORK="$work" in_netns scripts/local-images.sh \
    builder "$USERNS_BUILDER_IMAGE" "$NODE_BIN"
  log "images pushed ($(elapsed))"
}

containerd_up() {
  local c="$DIR/containerd"
  mkdir -p "$c/certs.d/$REGISTRY" "$c/certs.d/$UPSTREAM" "$c/certs.d/docker.io" "$DIR/cni/net.d" "$DIR/cni/ipam"
  printf 'server = "http://%s"\n' "$REGISTRY" > "$c/certs.d/$REGISTRY/hosts.toml"
  printf 'server = "http://%s"\n' "$UPSTREAM" > "$c/certs.d/$UPSTREAM/hosts.toml"
  # docker.io is served from the local registry: the chart's default builder image
  # (docker.io/moby/buildkit) is the one made here. Nothing is fetched from docker.io.
  cat > "$c/certs.d/docker.io/hosts.toml" <<EOF
server = "http://$REGISTRY"
[host."http://$REGISTRY"]
  capabilities = ["pull", "resolve"]
EOF
  cat > "$DIR/cni/net.d/10-kiln.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "kiln-cluster",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$DIR/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
EOF
  cat > "$c/config.toml" <<EOF
version = 3
root = "$c/root"
state = "$c/state"
[grpc]
  address = "$c/containerd.sock"
[ttrpc]
  address = "$c/containerd.sock.ttrpc"
[plugins."io.containerd.cri.v1.runtime"]
  # This machine refuses a negative oom_score_adj, even to root; the kubelet asks -998
  # for every sandbox.
  restrict_oom_score_adj = true
  # Pod network namespaces under our state directory, not /run/netns.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "$DIR/cni/net.d"
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "$NODE_BIN/runc"
        SystemdCgroup = false
[plugins."io.containerd.cri.v1.images"]
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "$c/certs.d"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "$PAUSE_IMAGE"
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
EOF
  # The shim is found on containerd's PATH.
  PATH="$NODE_BIN:$PATH" start containerd "$NODE_BIN/containerd" --config "$c/config.toml"
  wait_for 60 containerd test -S "$c/containerd.sock"
}

cgroups() {
  local hierarchy
  for hierarchy in /sys/fs/cgroup/*/; do
    [ -d "$hierarchy" ] && mkdir -p "$hierarchy${CGROUP_ROOT#/}"
  done
}

kubelet_up() {
  local k="$DIR/kubelet"
  mkdir -p "$k/root" "$DIR/pod-logs"
  echo "nameserver $NODE_IP" > "$DIR/resolv.conf"
  cat > "$k/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine mounts cgroup v1 hierarchies (and an empty unified one).
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: $CGROUP_ROOT
failSwapOn: false
containerRuntimeEndpoint: unix://$DIR/containerd/containerd.sock
# The API server reaches the kubelet (logs, port-forward) without a client certificate;
# nothing else can reach this namespace.
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
clusterDNS: [$NODE_IP]
clusterDomain: cluster.local
resolvConf: $DIR/resolv.conf
podLogsDir: $DIR/pod-logs
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
serializeImagePulls: false
registerNode: true
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  imagefs.available: 1%
  nodefs.inodesFree: 1%
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
localStorageCapacityIsolation: true
EOF
  start kubelet "$ENVTEST" kubelet --config="$k/config.yaml" --kubeconfig="$KUBECONFIG_FILE" \
    --root-dir="$k/root" --hostname-override="$NODE_NAME" --node-ip="$NODE_IP"
  wait_for 120 "node $NODE_NAME" node_ready
  log "node ready ($(elapsed))"
}

node_ready() {
  in_netns "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" get node "$NODE_NAME" \
    -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' | grep -qx True
}

services_up() {
  cat > "$DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $KUBECONFIG_FILE
mode: iptables
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE_NAME
bindAddress: 0.0.0.0
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Leave the machine's conntrack table settings alone: they are not this namespace's.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
  start kube-proxy "$ENVTEST" kube-proxy --config="$DIR/kube-proxy.yaml"
  start cluster-dns "$ENVTEST" cluster-dns --kubeconfig="$KUBECONFIG_FILE" \
    --listen="$NODE_IP:53" --domain=cluster.local
}

storage() {
  # One hostPath volume for the cache's claim (no provisioner); the cache runs as 65532.
  mkdir -p "$DIR/volumes/cache"
  chown 65532:65532 "$DIR/volumes/cache"
  in_netns "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolume
metadata:
  name: local-cache
spec:
  capacity:
    storage: 20Gi
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Delete
  hostPath:
    path: $DIR/volumes/cache
    type: Directory
EOF
}

write_env() {
  cat > "$DIR/env" <<EOF
export KILN_CLUSTER_NETNS="$NETNS"
export KILN_CLUSTER_DIR="$DIR"
export KUBECONFIG="$KUBECONFIG_FILE"
export KILN_CLUSTER_NODE_IP="$NODE_IP"
export KILN_CLUSTER_REGISTRY="$REGISTRY"
export KILN_CLUSTER_UPSTREAM="$UPSTREAM"
export KILN_CLUSTER_UPSTREAM_LOG="$DIR/logs/registry-upstream.log"
export KILN_CLUSTER_BUILDER_IMAGE="$BUILDER_IMAGE"
export KILN_CLUSTER_USERNS_BUILDER_IMAGE="$USERNS_BUILDER_IMAGE"
export KILN_CLUSTER_NODE_BIN="$NODE_BIN"
EOF
}

cmd_up() {
  check_tools
  if [ -e "/run/netns/$NETNS" ]; then
    # A namespace nothing runs in is a leftover of a killed run: remove it.
    [ -z "$(ip netns pids "$NETNS" 2>/dev/null)" ] \
      || die "network namespace $NETNS is in use: run '$0 down' first"
    log "removing the leftover network namespace $NETNS"
    ip netns delete "$NETNS"
  fi
  # shellcheck source=/dev/null
  [ -f target/kiln-tools.env ] && . target/kiln-tools.env
  KUBECTL="${KILN_KUBECTL:-$(command -v kubectl || true)}"
  [ -x "$KUBECTL" ] || die "kubectl not found: run scripts/install-test-deps.sh"
  binaries
  rm -rf "$DIR"
  mkdir -p "$DIR/logs" "$DIR/pids"
  network
  # Every kiln-envtest server exits when this process goes (its parent watchdog): `down`
  # kills it last, and a killed `up` leaves no server behind.
  nsenter --net="/run/netns/$NETNS" -- setsid sleep infinity < /dev/null > /dev/null 2>&1 &
  echo $! > "$DIR/pids/holder"
  pki
  control_plane
  registries
  images
  containerd_up
  cgroups
  kubelet_up
  services_up
  storage
  write_env
  log "up in $(elapsed); kubeconfig: $KUBECONFIG_FILE (use it inside the namespace: $0 exec CMD)"
  echo "$KUBECONFIG_FILE"
}

# --- down -----------------------------------------------------------------------------------

stop_pid() { # stop_pid NAME [SIGNAL]: the process of $DIR/pids/NAME, waited for
  local file="$DIR/pids/$1" pid i
  [ -f "$file" ] || return 0
  pid="$(cat "$file")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "-${2:-TERM}" "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

# Processes of the pods: every process in a cgroup under $CGROUP_ROOT.
kill_pod_processes() {
  local procs
  procs="$(find /sys/fs/cgroup/*/"${CGROUP_ROOT#/}" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u || true)"
  # shellcheck disable=SC2086
  [ -z "$procs" ] || kill -KILL $procs 2>/dev/null || true
}

# The runc shims of our containerd: they name its socket in their arguments.
kill_shims() {
  local pid sock="$DIR/containerd/containerd.sock"
  for pid in $(pgrep -f containerd-shim-runc-v2 || true); do
    if tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "-address $sock"; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
}

cmd_down() {
  local name mount
  # Best effort, every step: one that fails must not leave the later ones undone.
  set +e
  if [ -d "$DIR/pids" ]; then
    stop_pid kubelet
    kill_pod_processes
    sleep 1
    kill_shims
    for name in containerd kube-proxy cluster-dns kube-scheduler kube-controller-manager \
      kube-apiserver etcd registry-images registry-upstream holder; do
      stop_pid "$name"
    done
    kill_pod_processes
  fi
  # Mounts under the state directory, deepest first: container root filesystems, volume
  # tmpfs, the pods' network namespaces.
  if [ -d "$DIR" ]; then
    { findmnt -rn -o TARGET | grep -F "$DIR/" || true; } | sort -r | while read -r mount; do
      umount -l "$mount" 2>/dev/null || true
    done
  fi
  # Cgroups of the pods, deepest first.
  for name in /sys/fs/cgroup/*/"${CGROUP_ROOT#/}"; do
    [ -d "$name" ] && find "$name" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  # The kubelet links container logs from a fixed directory; ours point into pod-logs.
  if [ -d /var/log/containers ]; then
    find /var/log/containers -maxdepth 1 -type l -lname "$DIR/pod-logs/*" -delete 2>/dev/null || true
  fi
  # libcni keeps a result cache per attachment (the bridge's and containerd's loopback);
  # ours name a network namespace under $DIR.
  if [ -d /var/lib/cni/results ]; then
    { grep -lrF "\"netns\":\"$DIR/" /var/lib/cni/results 2>/dev/null || true; } | xargs -r rm -f
    rmdir /var/lib/cni/results /var/lib/cni 2>/dev/null || true
  fi
  if [ -e "/run/netns/$NETNS" ]; then
    ip netns delete "$NETNS"
  fi
  if [ "${KILN_CLUSTER_KEEP_STATE:-}" != 1 ]; then
    rm -rf "$DIR"
  fi
  set -e
  [ ! -e "/run/netns/$NETNS" ] || die "network namespace $NETNS is still there"
  log "down"
}

cmd_env() {
  [ -f "$DIR/env" ] || die "not up: run '$0 up'"
  cat "$DIR/env"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  env) cmd_env ;;
  exec)
    shift
    [ -e "/run/netns/$NETNS" ] || die "not up: run '$0 up'"
    # shellcheck source=/dev/null
    . "$DIR/env"
    exec nsenter --net="/run/netns/$NETNS" -- "$@" ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
