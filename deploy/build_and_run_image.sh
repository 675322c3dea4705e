#!/usr/bin/env bash
# Build the CPU serving image with podman and run it the way the Kubernetes pod does, then check it:
# health SERVING, one recognition, /metrics, and a clean exit (status 0) on SIGTERM while a stream is open.
#
#   deploy/build_and_run_image.sh            # from the repository root
#
# Needs: podman and runc (apt-get install podman runc), the project's virtual environment with the export
# extra (it builds the demo model and runs the client): PYTHON=.venv/bin/python by default.
# No image registry is needed: with the default BASE_IMAGE (localhost/emotion2vec-base:bookworm) the base is
# made here with debootstrap (apt-get install debootstrap) and `podman import`, once, and reused afterwards.
# The machine's CA bundle is copied into that base, so pip inside the build reaches the same package index
# this machine does (also behind a TLS-intercepting proxy).
#
# Settings (environment):
#   BASE_IMAGE        base of both build stages (default localhost/emotion2vec-base:bookworm, made here;
#                     e.g. python:3.12-slim-bookworm or a mirror of it where a registry is reachable)
#   DEBIAN_MIRROR     mirror for debootstrap (default http://deb.debian.org/debian)
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL   passed to the build as build arguments when set
#   IMAGE             tag of the built image (default localhost/emotion2vec-serving:cpu-check)
#   MODELCAR_BASE     base of the model image (deploy/docker/Dockerfile.modelcar; it needs `cp`): default
#                     BASE_IMAGE, since busybox may not be reachable
#   WORK              scratch directory (default: a new temporary directory, removed at the end)
#   KEEP_IMAGE=1      keep the built image (it is removed at the end by default; the base is kept)
# Prints the measured build time, image size and time to SERVING; exits non-zero on the first failed check.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
BASE_IMAGE="${BASE_IMAGE:-localhost/emotion2vec-base:bookworm}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
IMAGE="${IMAGE:-localhost/emotion2vec-serving:cpu-check}"
MODELCAR_IMAGE="${IMAGE}-model"
CA_BUNDLE="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
OWN_WORK=0
if [ -z "${WORK:-}" ]; then WORK="$(mktemp -d /var/tmp/emotion-image-check.XXXXXX)"; OWN_WORK=1; fi
mkdir -p "$WORK"
NAME="emotion-image-check-$$"

say() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
fail() { say "FAILED: $*"; exit 1; }

for tool in podman runc; do
  command -v "$tool" >/dev/null || fail "$tool not found (apt-get install podman runc)"
done
[ -x "$PYTHON" ] || fail "$PYTHON not found: set PYTHON to the project's virtual environment's python"

# podman reads this file instead of /etc/containers/containers.conf: no default ulimits (containers inside
# containers may not raise them) and runc as the runtime. The machine's own configuration is left alone.
cat > "$WORK/containers.conf" <<'CONF'
[containers]
default_ulimits = []
[engine]
runtime = "runc"
CONF
export CONTAINERS_CONF="$WORK/containers.conf"
PODMAN=(podman)

# Untagged images left by this run's builds (the build stage) are removed with it; older ones are not ours.
DANGLING_BEFORE="$("${PODMAN[@]}" images -q --filter dangling=true 2>/dev/null | sort -u || true)"
cleanup() {
  "${PODMAN[@]}" rm -f -t 0 "$NAME" >/dev/null 2>&1 || true
  if [ "${KEEP_IMAGE:-0}" != 1 ]; then
    "${PODMAN[@]}" rmi -f "$IMAGE" "$MODELCAR_IMAGE" >/dev/null 2>&1 || true
    comm -13 <(printf '%s\n' "$DANGLING_BEFORE") \
      <("${PODMAN[@]}" images -q --filter dangling=true 2>/dev/null | sort -u) \
      | xargs -r "${PODMAN[@]}" rmi -f >/dev/null 2>&1 || true
  fi
  if [ -n "${STREAM_PID:-}" ]; then kill "$STREAM_PID" 2>/dev/null || true; fi
  if [ "$OWN_WORK" = 1 ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

# 1. The base image: made locally when it does not exist yet and has a localhost/ name.
if ! "${PODMAN[@]}" image exists "$BASE_IMAGE"; then
  case "$BASE_IMAGE" in
    localhost/*) ;;
    *) say "pulling $BASE_IMAGE"; "${PODMAN[@]}" pull "$BASE_IMAGE" ;;
  esac
fi
if ! "${PODMAN[@]}" image exists "$BASE_IMAGE"; then
  command -v debootstrap >/dev/null || fail "debootstrap not found (apt-get install debootstrap)"
  say "making $BASE_IMAGE with debootstrap from $DEBIAN_MIRROR (once; several minutes)"
  started=$(date +%s)
  rootfs="$WORK/rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" \
    "$DEBIAN_MIRROR" > "$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log"; fail "debootstrap"; }
  # The machine's CA bundle (it may hold a proxy's CA that the Debian bundle lacks).
  cp "$CA_BUNDLE" "$rootfs/etc/ssl/certs/ca-certificates.crt"
  rm -rf "$rootfs/var/cache/apt/archives/"*.deb "$rootfs/var/lib/apt/lists/"*
  tar -C "$rootfs" -c . | "${PODMAN[@]}" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
  say "base made in $(( $(date +%s) - started )) s"
fi

# 2. Build the CPU image.
build_args=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
[ -n "${PIP_INDEX_URL:-}" ] && build_args+=(--build-arg "PIP_INDEX_URL=$PIP_INDEX_URL")
[ -n "${PIP_EXTRA_INDEX_URL:-}" ] && build_args+=(--build-arg "PIP_EXTRA_INDEX_URL=$PIP_EXTRA_INDEX_URL")
say "building $IMAGE from deploy/docker/Dockerfile.cpu on $BASE_IMAGE"
started=$(date +%s.%N)
"${PODMAN[@]}" build --runtime runc --network host --pull=never "${build_args[@]}" \
  -f deploy/docker/Dockerfile.cpu -t "$IMAGE" . > "$WORK/build.log" 2>&1 \
  || { tail -30 "$WORK/build.log"; fail "podman build (log: $WORK/build.log)"; }
build_s=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
size_bytes=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$IMAGE")
say "built in ${build_s} s, image size $(( size_bytes / 1000000 )) MB"
"${PODMAN[@]}" run --rm --runtime runc --network none --entrypoint python "$IMAGE" \
  -c "import importlib.util as u, sys; sys.exit(u.find_spec('pip') is not None or u.find_spec('torch') is not None)" \
  || fail "the runtime image still holds pip or torch"

# 3. The model repository (the demo model: no weights needed), delivered as components/modelcar does: a
#    model image built from the export, whose `cp` copies it into the pod's volume as uid 10001.
mkdir -p "$WORK/modelcar" "$WORK/models"
"$PYTHON" -m emotion2vec_serving.export.cli demo --out "$WORK/modelcar/repository" > /dev/null \
  2> "$WORK/demo.log" || { cat "$WORK/demo.log"; fail "emotion-export demo"; }
chmod -R a+rX "$WORK/modelcar"
"${PODMAN[@]}" build --runtime runc --network none --pull=never \
  --build-arg "BASE_IMAGE=${MODELCAR_BASE:-$BASE_IMAGE}" -f deploy/docker/Dockerfile.modelcar \
  -t "$MODELCAR_IMAGE" "$WORK/modelcar" > "$WORK/modelcar.log" 2>&1 \
  || { tail -20 "$WORK/modelcar.log"; fail "model image build"; }
chmod 1777 "$WORK/models"  # the emptyDir the init container writes as uid 10001
"${PODMAN[@]}" run --rm --runtime runc --network none --user 10001:10001 --read-only --cap-drop ALL \
  --security-opt no-new-privileges -v "$WORK/models:/target" "$MODELCAR_IMAGE" cp -R /models/repository /target/ \
  || fail "copying the repository out of the model image"
[ -f "$WORK/models/repository/manifest.json" ] || fail "the model image held no repository"
say "model image $MODELCAR_IMAGE: $(( $("${PODMAN[@]}" image inspect --format '{{.Size}}' "$MODELCAR_IMAGE") / 1000000 )) MB"

# 4. Run it with the pod's security settings: uid 10001, read-only root, tmpfs /tmp, no capabilities,
#    no privilege escalation, the model mounted read-only.
ports=$("$PYTHON" - <<'PY'
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
)
read -r GRPC_PORT METRICS_PORT HTTP_PORT <<< "$ports"
TARGET="127.0.0.1:$GRPC_PORT"
say "starting the container (gRPC $GRPC_PORT, HTTP $HTTP_PORT, metrics $METRICS_PORT)"
started=$(date +%s.%N)
"${PODMAN[@]}" run -d --runtime runc --name "$NAME" --network host \
  --user 10001:10001 --read-only --tmpfs /tmp:rw,size=256m,mode=1777 \
  --cap-drop ALL --security-opt no-new-privileges \
  -v "$WORK/models:/models:ro" \
  -e EMOTION_PORT="$GRPC_PORT" -e EMOTION_METRICS_PORT="$METRICS_PORT" -e EMOTION_HTTP_PORT="$HTTP_PORT" \
  -e EMOTION_DRAIN_GRACE_S=20 \
  "$IMAGE" > /dev/null
client=("$PYTHON" -m emotion2vec_serving.clients.cli --target "$TARGET" --timeout 10)
for _ in $(seq 1 600); do
  if "${client[@]}" --retries 0 health > /dev/null 2>&1; then break; fi
  if [ "$("${PODMAN[@]}" inspect --format '{{.State.Running}}' "$NAME")" != true ]; then
    "${PODMAN[@]}" logs "$NAME" | tail -20; fail "the container exited before SERVING"
  fi
  sleep 0.1
done
"${client[@]}" health > /dev/null || { "${PODMAN[@]}" logs "$NAME" | tail -20; fail "never SERVING"; }
serve_s=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
say "SERVING ${serve_s} s after podman run"
"$PYTHON" - "http://127.0.0.1:$HTTP_PORT/v2/health/ready" <<'PY' || fail "HTTP readiness (/v2/health/ready)"
import sys
import urllib.request
sys.exit(urllib.request.urlopen(sys.argv[1], timeout=5).status != 200)
PY

# 5. One recognition, the metrics, then SIGTERM while a real-time stream is open.
"$PYTHON" - "$WORK/speech.wav" <<'PY'
import sys
import numpy as np
import soundfile as sf
t = np.arange(16000 * 4) / 16000
wave = 0.3 * np.sin(2 * np.pi * (140 + 30 * np.sin(2 * np.pi * 3 * t)) * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
sf.write(sys.argv[1], wave.astype(np.float32), 16000)
PY
# (from $WORK: the client writes its per-file results under ./outputs)
(cd "$WORK" && "${client[@]}" recognize "$WORK/speech.wav" > "$WORK/recognize.out" 2>&1) || fail "recognize"
grep -q "speech.wav: " "$WORK/recognize.out" || { cat "$WORK/recognize.out"; fail "recognize printed no label"; }
say "recognize: $(grep -o 'speech.wav: [^-]*' "$WORK/recognize.out" | head -1)"
"$PYTHON" - "http://127.0.0.1:$METRICS_PORT/metrics" <<'PY' || fail "metrics"
import sys
import urllib.request
text = urllib.request.urlopen(sys.argv[1], timeout=5).read().decode()
needed = [m for m in ("emotion_requests_total", "emotion_model_info") if m not in text]
sys.exit(f"missing metrics: {needed}" if needed else 0)
PY
say "metrics: served"
(cd "$WORK" && exec "${client[@]}" stream --realtime --json "$WORK/speech.wav") > "$WORK/stream.out" \
  2> "$WORK/stream.err" &
STREAM_PID=$!
# SIGTERM once the stream is open (the server counts it), as the kubelet would after the preStop hook.
for _ in $(seq 1 100); do
  if "$PYTHON" - "http://127.0.0.1:$METRICS_PORT/metrics" <<'PY'
import re, sys, urllib.request
text = urllib.request.urlopen(sys.argv[1], timeout=5).read().decode()
open_streams = [float(v) for v in re.findall(r'^emotion_active_streams (\S+)$', text, re.M)]
sys.exit(0 if any(v > 0 for v in open_streams) else 1)
PY
  then break; fi
  sleep 0.1
done
sleep 1  # a second of audio into the 4 s stream
"${PODMAN[@]}" kill --signal TERM "$NAME" > /dev/null
status=$("${PODMAN[@]}" wait "$NAME")
stream_rc=0; wait "$STREAM_PID" || stream_rc=$?
STREAM_PID=""
[ "$status" = 0 ] || { "${PODMAN[@]}" logs "$NAME" | tail -20; fail "exit status $status after SIGTERM"; }
[ "$stream_rc" = 0 ] || { cat "$WORK/stream.err"; fail "the open stream failed during the drain (rc $stream_rc)"; }
grep -q . "$WORK/stream.out" || fail "the stream returned no segment"
say "SIGTERM with an open stream: exit status 0, the stream completed ($(wc -l < "$WORK/stream.out") segment(s))"
echo "build_s=${build_s} image_mb=$(( size_bytes / 1000000 )) serving_s=${serve_s} exit_status=${status}"
