/**
 * Serves an exported disk recovery point with `qemu-nbd --read-only`. An iSCSI LUN is opened through qemu's
 * own libiscsi (userspace: no kernel initiator, no privileged pod) with our initiator name, which the volume
 * group was attached to.
 */
import { AppError, ErrorCode } from '../lib/errors.ts';
import { startQemuNbd, type QemuNbdServer } from '../nbd/qemu-nbd.ts';
import type { DiskExport } from '../prism/types.ts';

const IscsiUrl = /^iscsi:\/\/([^/]+)\/([^/]+)\/(\d+)$/;

/** qemu block options for an iscsi:// URL, with the initiator name the LUN is bound to. */
export function iscsiImageOpts(url: string, initiatorName: string): string {
  const match = IscsiUrl.exec(url);
  if (!match) {
    throw new AppError(ErrorCode.BadResponse, `"${url}" is not an iscsi://portal/iqn/lun URL`, { hint: 'report this Prism answer as a bug' });
  }
  const [, portal, target, lun] = match;
  // qemu's option syntax escapes a comma by doubling it.
  const value = (text: string) => text.replaceAll(',', ',,');
  return [
    'driver=raw',
    'file.driver=iscsi',
    'file.transport=tcp',
    `file.portal=${value(portal ?? '')}`,
    `file.target=${value(target ?? '')}`,
    `file.lun=${lun}`,
    `file.initiator-name=${value(initiatorName)}`,
  ].join(',');
}

export function serveDiskExport(diskExport: DiskExport, initiatorName: string, signal?: AbortSignal): Promise<QemuNbdServer> {
  if (diskExport.kind === 'file') return startQemuNbd({ image: diskExport.path, format: 'raw', shared: 4 }, signal);
  return startQemuNbd({ image: iscsiImageOpts(diskExport.url, initiatorName), imageOpts: true, shared: 4 }, signal);
}
