#!/usr/bin/env bash
# make demo: the whole system on one machine, on loopback and unix sockets.
# Starts a private RabbitMQ node, the secrets proxy (overlay on an embedded
# etcd) and a runner; generates keys and loads them through the proxy; sends
# a StudioML job, an HPKE job and a tampered message; prints each outcome and
# the decrypted responses; then stops everything it started.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN="$ROOT/bin/sealrun"
W=$(mktemp -d /tmp/sealrun-demo.XXXXXX)
RMQ=/usr/lib/rabbitmq/bin
PIDS=()

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
cleanup() {
	set +e
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
	[[ -n "${NODE:-}" ]] && HOME=$W "$RMQ/rabbitmqctl" -n "$NODE" stop >/dev/null 2>&1
	[[ -n "${EPMD_PID:-}" ]] && kill "$EPMD_PID" 2>/dev/null
	wait 2>/dev/null
	echo "demo: stopped everything it started (files left in $W)"
}
trap cleanup EXIT

say "build and dependencies"
bash "$ROOT/scripts/install-deps.sh"
make -s -C "$ROOT" build

say "RabbitMQ: a private node on 127.0.0.1"
AMQP_PORT=$(freeport) DIST_PORT=$(freeport) EPMD_PORT=$(freeport)
NODE="sealrun-demo-$$@localhost"
export HOME=$W RABBITMQ_NODENAME=$NODE RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT=$AMQP_PORT \
	RABBITMQ_DIST_PORT=$DIST_PORT RABBITMQ_MNESIA_BASE=$W/mnesia RABBITMQ_LOG_BASE=$W/log \
	RABBITMQ_CONFIG_FILE=$W/rabbitmq RABBITMQ_ENABLED_PLUGINS_FILE=$W/enabled_plugins \
	ERL_EPMD_ADDRESS=127.0.0.1 ERL_EPMD_PORT=$EPMD_PORT
echo '[].' >"$W/enabled_plugins"
echo 'loopback_users = none' >"$W/rabbitmq.conf"
epmd -port "$EPMD_PORT" & EPMD_PID=$!
"$RMQ/rabbitmq-server" >"$W/rabbitmq.out" 2>&1 & PIDS+=($!)
for _ in $(seq 1 120); do
	"$RMQ/rabbitmqctl" -n "$NODE" await_startup --timeout 5 >/dev/null 2>&1 && break
	sleep 1
done
"$RMQ/rabbitmqctl" -n "$NODE" await_startup --timeout 5 >/dev/null
AMQP="amqp://guest:guest@127.0.0.1:$AMQP_PORT/"
echo "broker at 127.0.0.1:$AMQP_PORT"

say "keys: RSA message key, HPKE key, a client's signing key and response key"
printf '%s' "demo-passphrase-$RANDOM$RANDOM" >"$W/pass"
"$BIN" keygen rsa --bits 4096 --passphrase-file "$W/pass" --out "$W/keys"
"$BIN" keygen hpke --out "$W/keys"
"$BIN" keygen signing --out "$W/client" --comment demo-client
"$BIN" keygen rsa --bits 2048 --passphrase-file "$W/pass" --out "$W/client/resp"

say "secrets proxy: Custodia API on $W/secrets.sock, overlay on embedded etcd"
cat >"$W/proxy.yaml" <<YAML
listen: {socket: $W/secrets.sock}
audit_log: $W/audit.log
storage:
  state: {backend: etcd, etcd: {data_dir: $W/proxy-etcd}}
  secrets: {backend: overlay, overlay: {store: etcd, master_key: $W/master.key, autogen: true}}
YAML
"$BIN" secrets apikey create --config "$W/proxy.yaml" --id admin --path /secrets/sealrun/ --verbs get,list,put,create,delete >"$W/admin.key"
"$BIN" secrets apikey create --config "$W/proxy.yaml" --id runner-1 --path /secrets/sealrun/ --verbs get,list,watch >"$W/runner.key"
"$BIN" secrets serve --config "$W/proxy.yaml" 2>"$W/proxy.log" & PIDS+=($!)
for _ in $(seq 1 100); do [[ -S "$W/secrets.sock" ]] && break; sleep 0.1; done

say "load the keys through the proxy (typed models under /secrets/sealrun/)"
b64() { base64 -w0 "$1"; }
via=(--socket "$W/secrets.sock" --api-id admin --api-key-file "$W/admin.key")
printf '{"key_id":"message","pem":"%s"}' "$(b64 "$W/keys/message.pem")" | "$BIN" secrets put "${via[@]}" --kind message-private-key message
printf '{"key_id":"message","passphrase":"%s"}' "$(b64 "$W/pass")" | "$BIN" secrets put "${via[@]}" --kind message-passphrase message
printf '{"key_id":"hpke","pem":"%s"}' "$(b64 "$W/keys/hpke.key")" | "$BIN" secrets put "${via[@]}" --kind message-private-key hpke
printf '{"queue_prefix":"demo_","public_key":"%s"}' "$(cat "$W/client/signing_ed25519.pub")" | "$BIN" secrets put "${via[@]}" --kind signing-key demo_
python3 -c 'import json,sys; print(json.dumps({"response_prefix": "demo_", "public_key_pem": open(sys.argv[1]).read()}))' "$W/client/resp/message.pub.pem" |
	"$BIN" secrets put "${via[@]}" --kind response-key demo_
"$BIN" secrets ls "${via[@]}" --kind signing-key | sed 's/^/signing key for prefix: /'

say "runner: consumes demo_jobs, keys through the proxy, job records in its own etcd"
RUNNER_HTTP=127.0.0.1:$(freeport)
cat >"$W/runner.yaml" <<YAML
runner_id: demo-runner
amqp: {url: "$AMQP"}
queues: [demo_jobs]
dead_letter: {}
keys:
  source: proxy
  proxy: {socket: $W/secrets.sock, api_id: runner-1, api_key_file: $W/runner.key}
executor:
  command: ["/bin/sh", "-c", "echo \"ran {{.Suite}} job {{.ID}} on {{.Queue}}\"; wc -c"]
http: {listen: "$RUNNER_HTTP"}
storage:
  state: {backend: etcd, etcd: {data_dir: $W/runner-etcd}}
  secrets: {backend: none}
YAML
# The response queue must exist for the runner to answer on it.
"$BIN" responses --amqp "$AMQP" --queue demo_jobs --private-key "$W/client/resp/message.pem" --passphrase-file "$W/pass" --wait 1s >/dev/null 2>&1 || true
"$BIN" runner --config "$W/runner.yaml" 2>"$W/runner.log" & PIDS+=($!)
for _ in $(seq 1 100); do curl -fs "http://$RUNNER_HTTP/readyz" >/dev/null 2>&1 && break; sleep 0.2; done
curl -fs "http://$RUNNER_HTTP/readyz" && echo

say "send: one StudioML job, one HPKE job, one tampered message"
echo '{"experiment": {"key": "studioml-job"}, "config": {}}' >"$W/req1.json"
echo '{"experiment": {"key": "hpke-job"}, "config": {}}' >"$W/req2.json"
"$BIN" send --amqp "$AMQP" --queue demo_jobs --public-key "$W/keys/message.pub.pem" --signing-key "$W/client/signing_ed25519" --request "$W/req1.json"
"$BIN" send --amqp "$AMQP" --queue demo_jobs --suite hpke --public-key "$W/keys/hpke.pub" --signing-key "$W/client/signing_ed25519" --request "$W/req2.json"
"$BIN" seal --public-key "$W/keys/message.pub.pem" --signing-key "$W/client/signing_ed25519" <"$W/req1.json" >"$W/msg.json"
python3 - "$W/msg.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
p = m["message"]["payload"]; i = len(p) // 2
m["message"]["payload"] = p[:i] + ("A" if p[i] != "A" else "B") + p[i + 1:]
json.dump(m, open(sys.argv[1], "w"))
PY
"$BIN" send --amqp "$AMQP" --queue demo_jobs --sealed --request "$W/msg.json" | sed 's/$/ (tampered)/'

say "responses, decrypted with the client's response key"
"$BIN" responses --amqp "$AMQP" --queue demo_jobs --private-key "$W/client/resp/message.pem" --passphrase-file "$W/pass" --count 2 --wait 30s

say "outcomes"
sleep 1
curl -fs "http://$RUNNER_HTTP/metrics" | grep -E '^sealrun_runner_messages_total' || true
"$RMQ/rabbitmqctl" -n "$NODE" list_queues name messages 2>/dev/null | grep -E 'demo_jobs' | sed 's/^/queue /'
grep -h '"rejected\|reason' "$W/runner.log" | head -3 || true
"$BIN" audit verify "$W/audit.log"
