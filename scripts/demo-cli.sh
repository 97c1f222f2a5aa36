#!/usr/bin/env bash
# The demo: a simulated Prism Central with a two-disk VM; a full backup, guest writes, an incremental backup,
# a restore, and a byte-for-byte comparison of the restored disk with the simulator's disk.
set -euo pipefail
cd "$(dirname "$0")/.."
cli=bin/sendense-nutanix
node=node_modules/.bin/node
work=$(mktemp -d /tmp/sendense-demo.XXXXXX)
sim_pid=""
cleanup() { [ -n "$sim_pid" ] && kill "$sim_pid" 2>/dev/null && wait "$sim_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Start the Prism simulator (v4 Prism Central, 3 VMs with 2 disks of 256 MiB)"
$cli sim --data "$work/sim" --listen 127.0.0.1:0 --vms 3 --disks-per-vm 2 --disk-size 256MiB >"$work/sim.log" 2>&1 &
sim_pid=$!
for _ in $(seq 1 300); do [ -f "$work/sim/sim.json" ] && break; sleep 0.1; done
[ -f "$work/sim/sim.json" ] || { cat "$work/sim.log"; exit 1; }
field() { $node -p "JSON.parse(require('fs').readFileSync('$work/sim/sim.json','utf8')).$1"; }
endpoint=$(field endpoint)
export NUTANIX_USERNAME; NUTANIX_USERNAME=$(field username)
export NUTANIX_PASSWORD; NUTANIX_PASSWORD=$(field password)
conn=(--endpoint "$endpoint" --ca-file "$(field caFile)")
repo="$work/repo"

step "List VMs"
$cli vms "${conn[@]}"

step "Full backup of vm-0001"
$cli backup "${conn[@]}" --vm vm-0001 --repo "$repo"

step "The guest writes 5% of disk 0"
$cli sim write --data "$work/sim" --vm vm-0001 --disk 0 --changed-percent 5 |
  $node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const b=JSON.parse(s).blocks;console.log(`${b.length} blocks of 64 KiB written, ${b.filter(x=>x.zero).length} of them zeros`)})'

step "Incremental backup of vm-0001"
$cli backup "${conn[@]}" --vm vm-0001 --repo "$repo"

step "Restore points"
$cli points --repo "$repo"

step "Restore disk 0 of the latest point and compare it with the simulator's disk"
$cli restore --repo "$repo" --vm vm-0001 --disk 0 --out "$work/disk0.raw"
qemu-img compare -f raw -F raw "$work/disk0.raw" "$($cli sim disk-path --data "$work/sim" --vm vm-0001 --disk 0)"

step "Verify every image, chain link and checksum"
$cli verify --repo "$repo"

step "The chain opens with stock qemu tools"
latest=$($cli points --repo "$repo" -o json | $node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const p=JSON.parse(s).at(-1);console.log(p.clusterUuid+"/"+p.vmUuid+"/"+p.pointId)})')
qemu-img info --backing-chain "$repo/$latest/disk-0.qcow2" | grep -E '^(image|backing file|virtual size|disk size):'
