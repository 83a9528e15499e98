#!/usr/bin/env bash
# Fetch, start, wait for and stop one Apache Cassandra 5.0 node on loopback, from its Maven
# Central artifacts, on the machine's JDK 17. Idempotent; data under the cache folder.
#
#   deploy/local/cassandra.sh fetch|start|wait|stop|status|clean
#   deploy/local/cassandra.sh run      in the foreground, logging to stdout (the container image)
#
# STERLING_ENGINES_DIR   cache folder (default ~/.cache/sterling/engines)
# CASSANDRA_VERSION      default 5.0.6
# CASSANDRA_PORT         native (CQL) port, default 9042
# CASSANDRA_HEAP         default 2G
# CASSANDRA_DATA         data folder, default under the cache folder
# CASSANDRA_RPC          address clients connect to, default 127.0.0.1 (0.0.0.0 in a container,
#                        then the address it tells clients is the container's own)
set -euo pipefail

VERSION="${CASSANDRA_VERSION:-5.0.6}"
ROOT="${STERLING_ENGINES_DIR:-$HOME/.cache/sterling/engines}/cassandra-$VERSION"
PORT="${CASSANDRA_PORT:-9042}"
HEAP="${CASSANDRA_HEAP:-2G}"
LIB="$ROOT/lib"
DATA="${CASSANDRA_DATA:-$ROOT/data}"
LOGS="$ROOT/logs"
PIDFILE="$ROOT/cassandra.pid"
RPC="${CASSANDRA_RPC:-127.0.0.1}"

log() { echo "cassandra: $*" >&2; }

fetch() {
  if [ -f "$LIB/.complete" ]; then return 0; fi
  command -v mvn >/dev/null || { log "maven (mvn) is needed to fetch Cassandra"; exit 1; }
  mkdir -p "$LIB" "$ROOT/fetch"
  cat > "$ROOT/fetch/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.sterling</groupId>
  <artifactId>cassandra-runtime</artifactId>
  <version>1</version>
  <dependencies>
    <dependency>
      <groupId>org.apache.cassandra</groupId>
      <artifactId>cassandra-all</artifactId>
      <version>$VERSION</version>
    </dependency>
  </dependencies>
</project>
POM
  log "fetching cassandra-all $VERSION and its dependencies from Maven Central"
  (cd "$ROOT/fetch" && mvn -q -B dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$LIB")
  touch "$LIB/.complete"
}

config() {
  mkdir -p "$DATA" "$LOGS" "$ROOT/conf"
  cat > "$ROOT/conf/cassandra.yaml" <<YAML
cluster_name: sterling-local
num_tokens: 1
initial_token: 0
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:7000"
listen_address: 127.0.0.1
rpc_address: $RPC
$( [ "$RPC" = 0.0.0.0 ] && echo "broadcast_rpc_address: $(hostname -i | awk '{print $1}')" )
storage_port: 7000
native_transport_port: $PORT
start_native_transport: true
# Durable per write: a write is acknowledged only once its commit log entry is on disk
# (concurrent writes share one fsync). With one replica, "periodic" would lose up to 10 s of
# acknowledged writes when the process dies.
commitlog_sync: batch
data_file_directories:
  - $DATA/data
commitlog_directory: $DATA/commitlog
hints_directory: $DATA/hints
saved_caches_directory: $DATA/saved_caches
cdc_raw_directory: $DATA/cdc_raw
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
auto_snapshot: false
write_request_timeout: 2000ms
read_request_timeout: 5000ms
cas_contention_timeout: 1000ms
concurrent_reads: 8
concurrent_writes: 8
YAML
  cat > "$ROOT/conf/logback.xml" <<XML
<configuration>
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>$LOGS/system.log</file>
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="${LOG_APPENDER:-FILE}"/></root>
</configuration>
XML
}

running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

# The JVM's command line, in JAVA_CMD.
java_cmd() {
  # The --add-exports/--add-opens of Cassandra's conf/jvm17-server.options.
  local opens=(
    --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
    --add-exports java.base/jdk.internal.ref=ALL-UNNAMED
    --add-exports java.base/sun.nio.ch=ALL-UNNAMED
    --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
    --add-exports java.sql/java.sql=ALL-UNNAMED
    --add-exports java.base/java.lang.ref=ALL-UNNAMED
    --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
    --add-opens java.base/java.lang.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.loader=ALL-UNNAMED
    --add-opens java.base/jdk.internal.ref=ALL-UNNAMED
    --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED
    --add-opens java.base/jdk.internal.math=ALL-UNNAMED
    --add-opens java.base/jdk.internal.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED
    --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
    --add-opens java.base/sun.nio.ch=ALL-UNNAMED
    --add-opens java.base/java.io=ALL-UNNAMED
    --add-opens java.base/java.nio=ALL-UNNAMED
    --add-opens java.base/java.util.concurrent=ALL-UNNAMED
    --add-opens java.base/java.util=ALL-UNNAMED
    --add-opens java.base/java.util.concurrent.atomic=ALL-UNNAMED
    --add-opens java.base/java.lang=ALL-UNNAMED
    --add-opens java.base/java.math=ALL-UNNAMED
    --add-opens java.base/java.lang.reflect=ALL-UNNAMED
    --add-opens java.base/java.net=ALL-UNNAMED
  )
  JAVA_CMD=(java -ea -Xss256k -Xms"$HEAP" -Xmx"$HEAP" -XX:+UseG1GC -XX:+PerfDisableSharedMem \
    -Djdk.attach.allowAttachSelf=true "${opens[@]}" \
    -Dcassandra.config="file://$ROOT/conf/cassandra.yaml" \
    -Dlogback.configurationFile="$ROOT/conf/logback.xml" \
    -Dcassandra.storagedir="$DATA" -Dcassandra.logdir="$LOGS" \
    -Dcassandra-foreground=yes -Dcassandra.jmx.local.port=7199 \
    -Dcassandra.skip_wait_for_gossip_to_settle=0 -Dcassandra.ring_delay_ms=100 \
    -Dcassandra.initial_token=0 -Dcassandra.superuser_setup_delay_ms=0 \
    -cp "$LIB/*" org.apache.cassandra.service.CassandraDaemon)
}

start() {
  if running; then log "already running (pid $(cat "$PIDFILE"))"; return 0; fi
  fetch
  config
  command -v java >/dev/null || { log "java (JDK 17) is needed"; exit 1; }
  : > "$LOGS/system.log"
  java_cmd
  log "starting on 127.0.0.1:$PORT (logs in $LOGS)"
  nohup "${JAVA_CMD[@]}" > "$LOGS/stdout.log" 2>&1 &
  echo $! > "$PIDFILE"
}

# In the foreground with the log on stdout, as a container's process.
run() {
  fetch
  LOG_APPENDER=STDOUT config
  java_cmd
  log "running on $RPC:$PORT"
  exec "${JAVA_CMD[@]}"
}

wait_ready() {
  local deadline=$((SECONDS + ${CASSANDRA_START_TIMEOUT:-180}))
  while [ $SECONDS -lt $deadline ]; do
    if grep -q "Starting listening for CQL clients\|Startup complete" "$LOGS/system.log" 2>/dev/null \
      && (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
      log "ready on 127.0.0.1:$PORT"
      return 0
    fi
    if ! running; then
      log "exited during start-up; last lines:"; tail -n 30 "$LOGS/stdout.log" "$LOGS/system.log" >&2 || true
      exit 1
    fi
    sleep 1
  done
  log "not ready after ${CASSANDRA_START_TIMEOUT:-180}s"; tail -n 30 "$LOGS/system.log" >&2 || true
  exit 1
}

stop() {
  if running; then
    local pid; pid="$(cat "$PIDFILE")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -9 "$pid" 2>/dev/null || true
    log "stopped"
  fi
  rm -f "$PIDFILE"
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  wait) wait_ready ;;
  up) start; wait_ready ;;
  run) run ;;
  stop) stop ;;
  status) if running; then echo "running (pid $(cat "$PIDFILE"))"; else echo "stopped"; exit 1; fi ;;
  clean) stop; rm -rf "$DATA" ;;
  *) echo "usage: $0 fetch|start|wait|up|run|stop|status|clean" >&2; exit 2 ;;
esac
