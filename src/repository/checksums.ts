/**
 * Per-disk checksum files: NDJSON, a header line then one line per hashed block (`{offset,length,hash}`, as the
 * mover produced them) or per range recorded as zeros (`{offset,length,zero:true}`). NDJSON keeps a terabyte
 * disk's file streamable and appendable.
 */
import { createReadStream } from 'node:fs';
import { createInterface } from 'node:readline';
import type { BlockChecksum } from '../mover/types.ts';
import { AppError, ErrorCode } from '../lib/errors.ts';
import { fsError, writeFileDurable } from './durable-fs.ts';
import { ChecksumLineSchema, ChecksumsHeaderSchema, checksumsApiVersion } from './manifest.ts';

export interface ByteRange {
  offset: number;
  length: number;
}

export interface DiskChecksums {
  blocks: BlockChecksum[];
  zeroRanges: ByteRange[];
}

/** `sync: false`: the caller fsyncs the file later (a commit's fsyncTree), as writeFileDurable describes. */
export async function writeChecksumsFile(path: string, diskIndex: number, sums: DiskChecksums, options: { sync?: boolean } = {}): Promise<void> {
  const lines = [JSON.stringify({ apiVersion: checksumsApiVersion, algorithm: 'xxh3-64', diskIndex })];
  for (const b of sums.blocks) lines.push(JSON.stringify({ offset: b.offset, length: b.length, hash: b.hash }));
  for (const z of sums.zeroRanges) lines.push(JSON.stringify({ offset: z.offset, length: z.length, zero: true }));
  await writeFileDurable(path, `${lines.join('\n')}\n`, 'w', options);
}

export async function readChecksumsFile(path: string, diskIndex: number): Promise<DiskChecksums> {
  const blocks: BlockChecksum[] = [];
  const zeroRanges: ByteRange[] = [];
  let lineNo = 0;
  const bad = (why: string) =>
    new AppError(ErrorCode.Integrity, `${path}:${lineNo}: ${why}`, {
      hint: 'the checksum file is damaged; the restore point cannot be verified (take a new full backup)',
    });
  try {
    const lines = createInterface({ input: createReadStream(path, 'utf8'), crlfDelay: Infinity });
    for await (const line of lines) {
      lineNo++;
      if (line === '') continue;
      let raw: unknown;
      try {
        raw = JSON.parse(line);
      } catch {
        throw bad('not JSON');
      }
      if (lineNo === 1) {
        const header = ChecksumsHeaderSchema.safeParse(raw);
        if (!header.success) throw bad(`bad header: ${header.error.message}`);
        if (header.data.diskIndex !== diskIndex) throw bad(`header is for disk ${header.data.diskIndex}, not ${diskIndex}`);
        continue;
      }
      const entry = ChecksumLineSchema.safeParse(raw);
      if (!entry.success) throw bad(entry.error.message);
      if ('hash' in entry.data) blocks.push(entry.data);
      else zeroRanges.push({ offset: entry.data.offset, length: entry.data.length });
    }
  } catch (err) {
    throw fsError(err, 'read', path);
  }
  if (lineNo === 0) throw bad('empty file');
  return { blocks, zeroRanges };
}
