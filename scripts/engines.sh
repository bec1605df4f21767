#!/usr/bin/env bash
# The real scanning daemons the tests and benchmarks talk to: clamd, spamd, rspamd, and c-icap with
# its virus_scan service backed by that clamd.
#
#   scripts/engines.sh start    install what is missing (as root), start all four, wait until each answers
#   scripts/engines.sh stop     stop each by its own pid file (TERM, then KILL), remove daemons.json
#   scripts/engines.sh status   what runs, where, and how much memory it holds
#
# Takes: the Debian packages clamav-daemon, spamd, rspamd, c-icap, libc-icap-mod-virus-scan.
# Gives: state/engines/daemons.json with each daemon's address (read by test/helpers/daemons.ts);
#   config, data, logs and pid file of each daemon under state/engines/<daemon>/. clamd (and c-icap
#   through it) alerts when a scanning limit is reached: the limits are scripts/clamd-limits.conf.
# Network: listens on 127.0.0.1 only and sends nothing off the machine: clamd loads only the test
#   signatures written here (freshclam never runs), spamd runs local tests only, rspamd's resolver is
#   127.0.0.1:53 and its network and Redis modules are off.
# Settings (environment): ICHIDAN_CLAMD_PORT (13310), ICHIDAN_SPAMD_PORT (17830), ICHIDAN_RSPAMD_PORT
#   (11333), ICHIDAN_RSPAMD_CONTROLLER_PORT (11334), ICHIDAN_ICAP_PORT (11344),
#   ICHIDAN_ENGINES_WAIT (seconds each daemon may take to answer; 180).
# As root, each daemon runs as its package's own user; otherwise everything runs as the caller.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VAR="$ROOT/state/engines"
HOST=127.0.0.1
CLAMD_PORT=${ICHIDAN_CLAMD_PORT:-13310}
SPAMD_PORT=${ICHIDAN_SPAMD_PORT:-17830}
RSPAMD_PORT=${ICHIDAN_RSPAMD_PORT:-11333}
RSPAMD_CONTROLLER_PORT=${ICHIDAN_RSPAMD_CONTROLLER_PORT:-11334}
ICAP_PORT=${ICHIDAN_ICAP_PORT:-11344}
WAIT=${ICHIDAN_ENGINES_WAIT:-180}
DAEMONS=(clamd spamd rspamd icap)
PACKAGES=(clamav-daemon clamdscan clamav-testfiles spamassassin spamd spamc rspamd c-icap libc-icap-mod-virus-scan)
# In two parts so that this file is not itself a hit for a scanner.
EICAR_HEAD='X5O!P%@AP[4\PZX54(P^)7CC)7}$'
EICAR_TAIL='EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*'
ICAP_MODULES=/usr/lib/$(uname -m)-linux-gnu/c_icap

for port in "$CLAMD_PORT" "$SPAMD_PORT" "$RSPAMD_PORT" "$RSPAMD_CONTROLLER_PORT" "$ICAP_PORT"; do
  [[ $port =~ ^[0-9]+$ ]] && ((port >= 1 && port <= 65535)) || { echo "engines: '$port' is not a TCP port" >&2; exit 2; }
done

IS_ROOT=false
[[ $(id -u) -eq 0 ]] && IS_ROOT=true

die() { echo "engines: $*" >&2; exit 1; }
say() { echo "engines: $*"; }

pid_file() {
  case $1 in
    clamd) echo "$VAR/clamd/clamd.pid" ;;
    spamd) echo "$VAR/spamd/spamd.pid" ;;
    rspamd) echo "$VAR/rspamd/run/rspamd.pid" ;;
    icap) echo "$VAR/icap/c-icap.pid" ;;
  esac
}

log_file() {
  case $1 in
    clamd) echo "$VAR/clamd/clamd.log" ;;
    spamd) echo "$VAR/spamd/spamd.log" ;;
    rspamd) echo "$VAR/rspamd/log/rspamd.log" ;;
    icap) echo "$VAR/icap/server.log" ;;
  esac
}

port_of() {
  case $1 in
    clamd) echo "$CLAMD_PORT" ;;
    spamd) echo "$SPAMD_PORT" ;;
    rspamd) echo "$RSPAMD_PORT" ;;
    icap) echo "$ICAP_PORT" ;;
  esac
}

# The program name in /proc/PID/cmdline: a recycled pid must never be mistaken for the daemon.
program_of() {
  case $1 in
    clamd) echo clamd ;;
    spamd) echo spamd ;;
    rspamd) echo rspamd ;;
    icap) echo c-icap ;;
  esac
}

# Prints the daemon's pid when its pid file names a live process of that program.
running_pid() {
  local file pid
  file=$(pid_file "$1")
  [[ -r $file ]] || return 1
  pid=$(tr -dc '0-9' <"$file")
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "$(program_of "$1")" || return 1
  echo "$pid"
}

# Sends one request to 127.0.0.1:PORT and prints the reply (NULs dropped); empty when nothing answers.
exchange() {
  local port=$1 request=$2
  timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0" || exit 1; printf "$1" >&3; cat <&3' "$port" "$request" 2>/dev/null \
    | tr -d '\0' || true
}

answers() {
  local reply
  case $1 in
    clamd) reply=$(exchange "$CLAMD_PORT" 'zPING\0'); [[ $reply == PONG* ]] ;;
    spamd) reply=$(exchange "$SPAMD_PORT" 'PING SPAMC/1.5\r\n\r\n'); [[ $reply == *PONG* ]] ;;
    rspamd) reply=$(exchange "$RSPAMD_PORT" 'GET /ping HTTP/1.0\r\n\r\n'); [[ $reply == *pong* ]] ;;
    icap)
      reply=$(exchange "$ICAP_PORT" "OPTIONS icap://$HOST:$ICAP_PORT/avscan ICAP/1.0\r\nHost: $HOST\r\nEncapsulated: null-body=0\r\nConnection: close\r\n\r\n")
      [[ $reply == "ICAP/1.0 200"* ]] ;;
  esac
}

port_taken() {
  timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0"' "$1" 2>/dev/null
}

# A process and all its descendants.
process_tree() {
  ps -e -o pid=,ppid= | awk -v root="$1" '
    { parent[$1] = $2 }
    END { for (p in parent) { q = p; while (q != "" && q != 0 && q != root) q = parent[q]; if (q == root) print p } }'
}

# Memory of a process tree in MB: resident (shared pages counted once per process, so it overstates
# forked workers) and proportional (shared pages split between their users), where readable.
tree_memory() {
  local rss=0 pss=0 pid kb
  for pid in $(process_tree "$1"); do
    kb=$(ps -o rss= -p "$pid" 2>/dev/null | tr -d ' ') && rss=$((rss + ${kb:-0}))
    kb=$(awk '/^Pss:/ { print $2 }' "/proc/$pid/smaps_rollup" 2>/dev/null) && pss=$((pss + ${kb:-0}))
  done
  if ((pss > 0)); then echo "rss $((rss / 1024)) MB, pss $((pss / 1024)) MB"; else echo "rss $((rss / 1024)) MB"; fi
}

install_missing() {
  local missing=()
  command -v clamd >/dev/null || missing+=(clamd)
  command -v spamd >/dev/null || missing+=(spamd)
  command -v spamc >/dev/null || missing+=(spamc)
  command -v rspamd >/dev/null || missing+=(rspamd)
  command -v c-icap >/dev/null || missing+=(c-icap)
  [[ -e $ICAP_MODULES/virus_scan.so && -e $ICAP_MODULES/clamd_mod.so ]] || missing+=(virus_scan.so)
  [[ ${#missing[@]} -eq 0 ]] && return 0
  $IS_ROOT || die "missing ${missing[*]}; as root run: apt-get install ${PACKAGES[*]}"
  say "installing ${PACKAGES[*]} (missing: ${missing[*]})"
  export DEBIAN_FRONTEND=noninteractive
  # Packages must not start their own system instances, which would take the same ports.
  local policy=/usr/sbin/policy-rc.d added_policy=false
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && added_policy=true
  fi
  apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null; } \
    || { $added_policy && rm -f "$policy"; die "apt-get install failed"; }
  if $added_policy; then rm -f "$policy"; fi
  hash -r
  ICAP_MODULES=$(dirname "$(dpkg -L libc-icap-mod-virus-scan | grep '/virus_scan.so$' | head -1)")
}

# Gives a daemon's folder to the user it runs as (root only: as anyone else it already is theirs).
own() {
  $IS_ROOT && chown -R "$1" "${@:2}"
  return 0
}

write_clamd() {
  local dir="$VAR/clamd"
  mkdir -p "$dir/db" "$dir/tmp"
  rm -f "$dir"/db/*
  # Only signatures written here. By hash: the EICAR test file and ClamAV's own test binary, which
  # also makes every archive and packed sample in clamav-testfiles a hit because clamd unpacks them.
  printf '%s\n' \
    '44d88612fea8a8f36de82e1278abb02f:68:Eicar-Test-Signature' \
    'aa15bcf478d165efd2065190eb473bcb:544:ClamAV-Test-File' >"$dir/db/ichidan-test.hdb"
  # By content: the EICAR string anywhere, because a hash never matches it inline in a mail body,
  # where line endings and neighbouring text change the bytes clamd hashes.
  printf 'Eicar-Test-Signature:0:*:%s\n' "$(printf '%s' "$EICAR_HEAD$EICAR_TAIL" | od -An -tx1 -v | tr -d ' \n')" \
    >"$dir/db/ichidan-test.ndb"
  {
    echo "Foreground no"
    echo "PidFile $dir/clamd.pid"
    echo "LogFile $dir/clamd.log"
    echo "LogTime yes"
    echo "DatabaseDirectory $dir/db"
    echo "TemporaryDirectory $dir/tmp"
    echo "TCPSocket $CLAMD_PORT"
    echo "TCPAddr $HOST"
    echo "LocalSocket $dir/clamd.sock"
    echo "LocalSocketMode 660"
    echo "MaxThreads 8"
    echo "Bytecode no"
    echo "SelfCheck 0"
    echo "ConcurrentDatabaseReload no"
    if $IS_ROOT; then echo "User clamav"; fi
    # Alert when a limit is reached instead of answering OK for content not read (the limits and why).
    grep -v '^#' "$ROOT/scripts/clamd-limits.conf"
  } >"$dir/clamd.conf"
  own clamav:clamav "$dir"
}

start_clamd() {
  write_clamd
  clamd -c "$VAR/clamd/clamd.conf" >"$VAR/clamd/startup.log" 2>&1
}

start_spamd() {
  local dir="$VAR/spamd" as_user=()
  mkdir -p "$dir/home"
  own debian-spamd:debian-spamd "$dir"
  if $IS_ROOT; then as_user=(-u debian-spamd -g debian-spamd); fi
  # -L: local tests only (no DNS blocklists, no URI lookups); -x: no per-user config files.
  spamd -L -x -i "$HOST" -p "$SPAMD_PORT" -A "$HOST" "${as_user[@]}" --helper-home-dir="$dir/home" \
    --max-children=4 -r "$dir/spamd.pid" -s "$dir/spamd.log" -d >"$dir/startup.log" 2>&1
}

write_rspamd() {
  local dir="$VAR/rspamd" module
  mkdir -p "$dir/conf/local.d" "$dir/conf/override.d" "$dir/db" "$dir/run" "$dir/log" "$dir/tmp"
  rm -f "$dir"/conf/local.d/* "$dir"/conf/override.d/*
  printf 'bind_socket = "%s:%s";\n' "$HOST" "$RSPAMD_PORT" >"$dir/conf/override.d/worker-normal.inc"
  printf 'bind_socket = "%s:%s";\n' "$HOST" "$RSPAMD_CONTROLLER_PORT" >"$dir/conf/override.d/worker-controller.inc"
  echo 'enabled = false;' >"$dir/conf/override.d/worker-proxy.inc"
  echo 'enabled = false;' >"$dir/conf/override.d/worker-fuzzy.inc"
  # A resolver on loopback where nothing answers, with a short timeout: each lookup fails within
  # about 0.2 s and nothing leaves the machine.
  cat >"$dir/conf/local.d/options.inc" <<EOF
dns {
  nameserver = ["127.0.0.1:53"];
  timeout = 0.2s;
  retransmits = 1;
}
tempdir = "$dir/tmp";
hs_cache_dir = "$dir/db/hs_cache";
EOF
  mkdir -p "$dir/db/hs_cache"
  echo 'level = "notice";' >"$dir/conf/local.d/logging.inc"
  # Modules that fetch maps over HTTP, query DNS (lists, or hfilter's HELO and sender-domain checks,
  # which offline only add "does not resolve" scores and a resolver timeout each), or need Redis.
  for module in rbl fuzzy_check phishing multimap rspamd_update spf dkim dkim_signing dmarc arc greylist \
    ratelimit neural reputation history_redis asn emails url_redirector whitelist mid replies mime_types \
    metadata_exporter clickhouse elastic dcc external_services antivirus p0f mx_check metric_exporter \
    bimi aws_s3 spamtrap hfilter; do
    echo 'enabled = false;' >"$dir/conf/local.d/$module.conf"
  done
  own _rspamd:_rspamd "$dir"
}

start_rspamd() {
  local dir="$VAR/rspamd" as_user=()
  write_rspamd
  if $IS_ROOT; then as_user=(-u _rspamd -g _rspamd); fi
  rspamd "${as_user[@]}" -c /etc/rspamd/rspamd.conf \
    --var=LOCAL_CONFDIR="$dir/conf" --var=DBDIR="$dir/db" --var=RUNDIR="$dir/run" --var=LOGDIR="$dir/log" \
    >"$dir/startup.log" 2>&1
}

write_icap() {
  local dir="$VAR/icap"
  mkdir -p "$dir/tmp"
  {
    echo "PidFile $dir/c-icap.pid"
    echo "CommandsSocket $dir/c-icap.ctl"
    echo "Port $HOST:$ICAP_PORT"
    # c-icap writes each body to TmpDir and hands clamd the path: clamd must be able to read it.
    # As root, c-icap runs in clamd's group and its files are group-readable.
    if $IS_ROOT; then echo "User c-icap"; echo "Group clamav"; fi
    echo "TmpDir $dir/tmp"
    echo "ServerLog $dir/server.log"
    echo "AccessLog $dir/access.log"
    echo "DebugLevel 1"
    echo "Timeout 60"
    echo "StartServers 1"
    echo "MaxServers 2"
    echo "MinSpareThreads 4"
    echo "MaxSpareThreads 16"
    echo "ThreadsPerChild 16"
    echo "MaxMemObject 131072"
    echo "Pipelining on"
    echo "ModulesDir $ICAP_MODULES"
    echo "ServicesDir $ICAP_MODULES"
    echo "TemplateDir /usr/share/c_icap/templates/"
    echo "TemplateDefaultLanguage en"
    echo "LoadMagicFile /etc/c-icap/c-icap.magic"
    echo "Module common clamd_mod.so"
    echo "clamd_mod.ClamdHost $HOST"
    echo "clamd_mod.ClamdPort $CLAMD_PORT"
    echo "Service antivirus_module virus_scan.so"
    echo "ServiceAlias avscan virus_scan?allow204=on&sizelimit=off&mode=simple"
    echo "virus_scan.ScanFileTypes TEXT DATA EXECUTABLE ARCHIVE GIF JPEG MSOFFICE DOCUMENT"
    echo "virus_scan.MaxObjectSize 25M"
    # A scan that fails is an ICAP error, never the body passed on unscanned. The limits are
    # clamd's (scripts/clamd-limits.conf): clamd_mod hands it the file.
    echo "virus_scan.PassOnError off"
    echo "virus_scan.DefaultEngine clamd"
  } >"$dir/c-icap.conf"
  if $IS_ROOT; then chown -R c-icap:clamav "$dir" && chmod 750 "$dir/tmp"; fi
}

start_icap() {
  write_icap
  c-icap -f "$VAR/icap/c-icap.conf" >"$VAR/icap/startup.log" 2>&1
}

fail_with_log() {
  local log startup
  log=$(log_file "$1")
  startup="$VAR/$1/startup.log"
  echo "engines: $1 did not answer on $HOST:$(port_of "$1") — $2." >&2
  [[ -s $startup ]] && { echo "--- $startup:" >&2; tail -n 15 "$startup" >&2; }
  echo "--- last lines of $log:" >&2
  tail -n 30 "$log" >&2 2>/dev/null || echo "(no log)" >&2
  exit 1
}

wait_until_answers() {
  local name=$1 began=$SECONDS
  while ! answers "$name"; do
    # A few seconds' grace before a missing pid file counts: some write it only once they have forked.
    if ((SECONDS - began > 5)) && ! running_pid "$name" >/dev/null; then
      fail_with_log "$name" "the process is gone"
    fi
    ((SECONDS - began < WAIT)) || fail_with_log "$name" "still silent after ${WAIT}s"
    sleep 0.2
  done
}

now_ms() { date +%s%3N; }

start_one() {
  local name=$1 t0
  t0=$(now_ms)
  if running_pid "$name" >/dev/null; then
    wait_until_answers "$name"
    say "$name already running (pid $(running_pid "$name"))"
    return 0
  fi
  rm -f "$(pid_file "$name")"
  if port_taken "$(port_of "$name")"; then
    die "$name: port $HOST:$(port_of "$name") is taken by a process this script did not start (set ICHIDAN_${name^^}_PORT)"
  fi
  if [[ $name == rspamd ]] && port_taken "$RSPAMD_CONTROLLER_PORT"; then
    die "rspamd: controller port $HOST:$RSPAMD_CONTROLLER_PORT is taken (set ICHIDAN_RSPAMD_CONTROLLER_PORT)"
  fi
  # 9>&-: the daemon must not inherit the lock, or it would hold it for as long as it runs.
  "start_$name" 9>&- || fail_with_log "$name" "it exited at start"
  wait_until_answers "$name"
  say "$name up on $HOST:$(port_of "$name") in $(($(now_ms) - t0)) ms (pid $(running_pid "$name"))"
}

write_json() {
  local tmp="$VAR/daemons.json.tmp"
  cat >"$tmp" <<EOF
{
  "clamd": { "host": "$HOST", "port": $CLAMD_PORT, "socket": "$VAR/clamd/clamd.sock", "pidFile": "$(pid_file clamd)" },
  "spamd": { "host": "$HOST", "port": $SPAMD_PORT, "pidFile": "$(pid_file spamd)" },
  "rspamd": { "host": "$HOST", "port": $RSPAMD_PORT, "controllerPort": $RSPAMD_CONTROLLER_PORT, "pidFile": "$(pid_file rspamd)" },
  "icap": { "host": "$HOST", "port": $ICAP_PORT, "service": "avscan", "pidFile": "$(pid_file icap)" }
}
EOF
  mv "$tmp" "$VAR/daemons.json"
}

any_alive() {
  local pid
  for pid in "$@"; do kill -0 "$pid" 2>/dev/null && return 0; done
  return 1
}

# TERM to every daemon at once (each takes about 2 s to wind down), up to 10 s for all, then KILL.
stop_all() {
  local name pid i names=() pids=()
  for name in "$@"; do
    if pid=$(running_pid "$name"); then
      kill -TERM "$pid" 2>/dev/null || true
      names+=("$name") pids+=("$pid")
    fi
  done
  for ((i = 0; i < 100; i++)); do
    any_alive "${pids[@]}" || break
    sleep 0.1
  done
  for i in "${!pids[@]}"; do
    if kill -0 "${pids[i]}" 2>/dev/null; then
      say "${names[i]} (pid ${pids[i]}) ignored TERM for 10s; killing it"
      kill -KILL "${pids[i]}" 2>/dev/null || true
    fi
    say "${names[i]} stopped (pid ${pids[i]})"
  done
  for name in "$@"; do rm -f "$(pid_file "$name")"; done
}

status() {
  local name pid any=false
  for name in "${DAEMONS[@]}"; do
    if pid=$(running_pid "$name"); then
      any=true
      printf '%-7s running  pid %-7s %s:%-6s %s\n' "$name" "$pid" "$HOST" "$(port_of "$name")" "$(tree_memory "$pid")"
    else
      printf '%-7s stopped\n' "$name"
    fi
  done
  $any
}

lock() {
  mkdir -p "$VAR"
  exec 9>"$VAR/.lock"
  flock -w 600 9 || die "another scripts/engines.sh has held $VAR/.lock for 10 minutes"
}

case ${1:-} in
  start)
    lock
    install_missing
    # As root the daemons run as their own users: every folder above theirs must let them through.
    if $IS_ROOT && ! runuser -u clamav -- test -x "$VAR"; then
      die "the clamav user cannot reach $VAR (a folder above it is closed to other users: ls -ld each one)"
    fi
    t0=$(now_ms)
    # clamd first: c-icap's virus_scan needs it.
    for name in "${DAEMONS[@]}"; do start_one "$name"; done
    write_json
    say "all running in $(($(now_ms) - t0)) ms; addresses in $VAR/daemons.json"
    ;;
  stop)
    lock
    rm -f "$VAR/daemons.json"
    stop_all "${DAEMONS[@]}"
    ;;
  status)
    status || exit 3
    ;;
  *)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
