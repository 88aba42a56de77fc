# A one-machine Slurm cluster for tests/test_slurm.sh (sourced): munged, slurmctld and slurmd of
# Debian's munge/slurmctld/slurmd packages, each in the foreground as a child of this shell, with
# every file (key, sockets, configuration, state, logs) under $cluster and free TCP ports, so it
# neither needs nor touches /etc, systemd or a cluster already on the machine, and several can
# run at once. slurm_stop stops the three by PID.
#   slurm_start DIR   -> exports SLURM_CONF (the client commands then talk to this cluster)
#   slurm_stop
slurm_pids=()

slurm_log() { echo "test_slurm: $*" >&2; }

# Waits up to $1 seconds for the command after it to succeed.
wait_for() {
  local limit=$1; shift
  local end=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < end)) || return 1
    sleep 0.2
  done
}

slurm_start() {
  cluster=$1
  mkdir -p "$cluster"/{munge,state,spool,log}
  chmod 755 "$cluster/munge"
  local user host ports
  user=$(id -un)
  host=$(hostname -s)
  # Two free ports (the kernel's choice, released just before slurmctld and slurmd bind them).
  ports=$(python3 -c 'import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*(x.getsockname()[1] for x in s))')
  read -r ctld_port slurmd_port <<<"$ports"

  dd if=/dev/urandom of="$cluster/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$cluster/munge/munge.key"
  munged --foreground --force --key-file="$cluster/munge/munge.key" \
    --socket="$cluster/munge/munge.sock" --pid-file="$cluster/munge/munged.pid" \
    --seed-file="$cluster/munge/munged.seed" --log-file="$cluster/log/munged.log" \
    2>"$cluster/log/munged.stderr" &
  slurm_pids+=($!)
  wait_for 10 test -S "$cluster/munge/munge.sock" || { slurm_log "munged did not start"; return 1; }

  local cpus=$(nproc)
  cat > "$cluster/slurm.conf" <<CONF
ClusterName=kvqtest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$cluster/munge/munge.sock
StateSaveLocation=$cluster/state
SlurmdSpoolDir=$cluster/spool
SlurmctldPidFile=$cluster/slurmctld.pid
SlurmdPidFile=$cluster/slurmd.pid
SlurmctldLogFile=$cluster/log/slurmctld.log
SlurmdLogFile=$cluster/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
KillWait=2
MinJobAge=600
GresTypes=gpu
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus Gres=gpu:1 State=UNKNOWN
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
  # One pretend GPU (/dev/null as its device file) so that the GPU variant's --gres=gpu:1 is
  # scheduled and sets CUDA_VISIBLE_DEVICES as on a real GPU node.
  echo "NodeName=$host Name=gpu File=/dev/null" > "$cluster/gres.conf"
  export SLURM_CONF=$cluster/slurm.conf

  slurmctld -D -f "$SLURM_CONF" 2>"$cluster/log/slurmctld.stderr" &
  slurm_pids+=($!)
  slurmd -D -f "$SLURM_CONF" 2>"$cluster/log/slurmd.stderr" &
  slurm_pids+=($!)
  wait_for 30 slurm_node_idle || { slurm_log "the node did not come up"; slurm_dump_logs; return 1; }
}

slurm_queue_empty() { [ -z "$(squeue -h 2>/dev/null)" ]; }
slurm_node_idle() { [ "$(sinfo -h -o %T 2>/dev/null)" = idle ]; }

slurm_dump_logs() {
  local f
  for f in "$cluster"/log/*.log; do
    echo "---- $f (last 30 lines)" >&2
    tail -n 30 "$f" >&2
  done
}

# Cancels what is still queued or running (a test that failed half-way leaves no job step or
# stopped kvq behind), then stops the daemons by PID (TERM, then KILL after 10 s), newest first.
slurm_stop() {
  local i pid
  if ((${#slurm_pids[@]})) && [ -n "$(squeue -h 2>/dev/null)" ]; then
    scancel --user="$(id -un)" 2>/dev/null
    wait_for 20 slurm_queue_empty || slurm_log "jobs still in the queue at the end"
  fi
  for ((i = ${#slurm_pids[@]} - 1; i >= 0; i--)); do
    pid=${slurm_pids[i]}
    kill -TERM "$pid" 2>/dev/null || continue
    wait_for 10 bash -c "! kill -0 $pid" || kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  slurm_pids=()
}
