/**
 * Block checksums: xxh3-64 of guest bytes as 16 lower-case hex digits, from the reference xxHash C library
 * (xxhash-addon: N-API prebuilds, so no compiler at install). It hashes a Buffer in place at ~20 GiB/s here;
 * hash-wasm's xxh3, used before, copied every 16 KiB into WebAssembly memory first and reached ~6.5 GiB/s. Verify
 * recomputes with another implementation (@node-rs/xxhash), so writer and verifier share no hashing code.
 */
import xxhash from 'xxhash-addon';

export function hashBlock(bytes: Buffer): string {
  return xxhash.XXHash3.hash(bytes).toString('hex');
}
