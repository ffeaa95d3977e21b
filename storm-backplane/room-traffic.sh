#!/usr/bin/env bash
# What Redis does for `storm chat --backplane` room messages: two nodes on
# a fresh redis-server (free loopback port, no persistence), one sender on
# node A in `lobby`, S idle sessions on node B in ROOM_B; the sender sends M
# chat messages. Prints the publish script's calls (one per room message,
# whatever S), the subscribers of lobby's channel (nodes with a member
# there) and the bytes Redis sent meanwhile.
# Usage: storm-backplane/room-traffic.sh target/debug/storm S ROOM_B M
set -u
STORM=$1; S=$2; ROOM_B=$3; M=$4
P=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
DIR=$(mktemp -d)
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$DIR"; }
trap cleanup EXIT
# Waits (at most 20 s) until the command succeeds.
await() { local end=$((SECONDS + 20)); until eval "$1"; do [ $SECONDS -lt $end ] || { echo "timeout: $1" >&2; exit 1; }; done; }
redis-server --port "$P" --bind 127.0.0.1 --save '' --appendonly no --dir "$DIR" --logfile '' >/dev/null &
PIDS+=($!)
await "redis-cli -p $P ping >/dev/null 2>&1"
# A process whose stdin is a fifo held open by this script (fd $2).
n=0
spawn() { n=$((n+1)); mkfifo "$DIR/in$n"; "$@" < "$DIR/in$n" > "$DIR/out$n" 2>/dev/null & PIDS+=($!); exec {fd}>"$DIR/in$n"; LAST=$n; LASTFD=$fd; }
spawn "$STORM" chat --addr 127.0.0.1:0 --no-http --tick-ms 0 --backplane "redis://127.0.0.1:$P"; NA=$LAST
spawn "$STORM" chat --addr 127.0.0.1:0 --no-http --tick-ms 0 --backplane "redis://127.0.0.1:$P"; NB=$LAST
await "grep -q 'listening on ws://' $DIR/out$NA && grep -q 'listening on ws://' $DIR/out$NB"
WA=$(grep -o 'ws://[^ ]*' "$DIR/out$NA" | head -1); WB=$(grep -o 'ws://[^ ]*' "$DIR/out$NB" | head -1)
for i in $(seq 1 "$S"); do
  spawn "$STORM" client ws "$WB"
  if [ "$ROOM_B" != lobby ]; then echo "{\"type\":\"join\",\"room\":\"$ROOM_B\"}" >&"$LASTFD"; fi
  await "grep -q '\"type\":\"position\",\"room\":\"$ROOM_B\"' $DIR/out$LAST"
done
spawn "$STORM" client ws "$WA"; NS=$LAST; FS=$LASTFD
await "grep -q '\"type\":\"position\"' $DIR/out$NS"
redis-cli -p "$P" config resetstat > /dev/null
OUT0=$(redis-cli -p "$P" info stats | tr -d '\r' | awk -F: '/total_net_output_bytes/{print $2}')
for i in $(seq 1 "$M"); do echo '{"type":"chat","text":"0123456789"}' >&"$FS"; done
await "[ \$(grep -c '\"type\":\"chat\"' $DIR/out$NS) -ge $M ]"
EVALSHA=$(redis-cli -p "$P" info commandstats | tr -d '\r' | awk -F'[=,]' '/cmdstat_evalsha/{print $2}')
OUT1=$(redis-cli -p "$P" info stats | tr -d '\r' | awk -F: '/total_net_output_bytes/{print $2}')
NUMSUB=$(redis-cli -p "$P" pubsub numsub storm.room.lobby | tail -1)
echo "sessions on B: $S in $ROOM_B; chat messages: $M; EVALSHA (publish script) calls: $EVALSHA; subscribers of storm.room.lobby: $NUMSUB; bytes Redis sent: $((OUT1-OUT0))"
