#!/usr/bin/env bash
# A single-node Apache Cassandra for the CQL store tests (no Docker needed):
# cassandra-all from Maven Central, run in-process by tests/cassandra's
# Launcher on 127.0.0.1, heap capped at 1 GB.
#
#   scripts/cassandra.sh start    build on first use, launch in the background,
#                                 wait until 127.0.0.1:$PORT answers CQL, print the pid
#   scripts/cassandra.sh stop     stop it (SIGTERM, then SIGKILL after 30 s)
#   scripts/cassandra.sh status   exit 0 if it is running and answers CQL
#   scripts/cassandra.sh clean    stop it and delete its data directory
#
# Environment: CHORUS_CASSANDRA_DIR (default target/cassandra: data, log, pid),
# CHORUS_CASSANDRA_PORT (native CQL port, default 9042),
# CHORUS_CASSANDRA_HEAP (default 1g), CHORUS_CASSANDRA_START_TIMEOUT (s, default 180).
# Data is kept across stop/start (the fault test relies on it); `clean` wipes it.
source "$(dirname "$0")/lib.sh"

DIR="${CHORUS_CASSANDRA_DIR:-$ROOT/target/cassandra}"
PORT="${CHORUS_CASSANDRA_PORT:-9042}"
HEAP="${CHORUS_CASSANDRA_HEAP:-1g}"
TIMEOUT="${CHORUS_CASSANDRA_START_TIMEOUT:-180}"
PROJECT="$ROOT/tests/cassandra"
PIDFILE="$DIR/cassandra.pid"
LOGFILE="$DIR/cassandra.log"

# Java 17 module openings Cassandra 5.0 needs (its conf/jvm17-server.options).
JVM_OPTS=(
  -Xms256m "-Xmx$HEAP" -Xss512k -XX:+UseG1GC -XX:MaxGCPauseMillis=300
  -XX:+ExitOnOutOfMemoryError -XX:+HeapDumpOnOutOfMemoryError "-XX:HeapDumpPath=$DIR"
  -Djava.net.preferIPv4Stack=true
  -Djdk.attach.allowAttachSelf=true
  --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
  --add-exports java.base/jdk.internal.ref=ALL-UNNAMED
  --add-exports java.base/sun.nio.ch=ALL-UNNAMED
  --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
  --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED
  --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
  --add-exports java.sql/java.sql=ALL-UNNAMED
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

ensure_java() {
  if ! command -v java >/dev/null || ! command -v mvn >/dev/null; then
    apt_install openjdk-17-jdk-headless maven
  fi
}

build() {
  local jar="$PROJECT/target/chorus-test-cassandra-1.jar"
  if [ -f "$jar" ] && [ -d "$PROJECT/target/lib" ] \
     && [ "$jar" -nt "$PROJECT/pom.xml" ] \
     && [ "$jar" -nt "$PROJECT/src/main/java/chorus/cassandra/Launcher.java" ] \
     && [ "$jar" -nt "$PROJECT/src/main/resources/logback.xml" ]; then
    return 0
  fi
  ensure_java
  log "building the Cassandra launcher (Maven; downloads cassandra-all the first time)"
  (cd "$PROJECT" && mvn -q -B package) >&2
}

# Sends a CQL OPTIONS frame (protocol v4) and expects SUPPORTED (opcode 6).
answers_cql() {
  local reply
  reply=$(timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT
    printf '\x04\x00\x00\x00\x05\x00\x00\x00\x00' >&3
    head -c 5 <&3 | od -An -tx1" 2>/dev/null) || return 1
  [ "$(echo $reply)" = "84 00 00 00 06" ]
}

running_pid() {
  [ -f "$PIDFILE" ] || return 1
  local pid
  pid=$(cat "$PIDFILE")
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

start() {
  local pid
  if pid=$(running_pid); then
    if answers_cql; then echo "$pid"; return 0; fi
  else
    if answers_cql; then
      echo "something else already answers CQL on 127.0.0.1:$PORT" >&2
      exit 1
    fi
    build
    mkdir -p "$DIR"
    log "starting Cassandra on 127.0.0.1:$PORT (data in $DIR, log $LOGFILE)"
    setsid java "${JVM_OPTS[@]}" \
      -cp "$PROJECT/target/chorus-test-cassandra-1.jar:$PROJECT/target/lib/*" \
      chorus.cassandra.Launcher "$DIR" "$PORT" >"$LOGFILE" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$PIDFILE"
  fi
  local t0=$SECONDS
  until answers_cql; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "Cassandra exited during start-up; last lines of $LOGFILE:" >&2
      tail -n 40 "$LOGFILE" >&2
      rm -f "$PIDFILE"
      exit 1
    fi
    if (( SECONDS - t0 > TIMEOUT )); then
      echo "Cassandra did not answer CQL on 127.0.0.1:$PORT within ${TIMEOUT}s; see $LOGFILE" >&2
      stop
      exit 1
    fi
    sleep 1
  done
  log "Cassandra answers CQL on 127.0.0.1:$PORT after $((SECONDS - t0))s (pid $pid)"
  echo "$pid"
}

stop() {
  local pid
  if ! pid=$(running_pid); then rm -f "$PIDFILE"; return 0; fi
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "Cassandra (pid $pid) ignored SIGTERM for 30 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
  fi
  rm -f "$PIDFILE"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) running_pid >/dev/null && answers_cql ;;
  clean) stop; rm -rf "$DIR" ;;
  build) build ;;
  *) echo "usage: $0 start|stop|status|clean|build" >&2; exit 2 ;;
esac
