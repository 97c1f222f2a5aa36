/**
 * NBD wire constants (NetworkBlockDevice/nbd doc/proto.md). All integers on the wire are big-endian.
 */
export const NbdMagic = {
  Init: 0x4e42444d41474943n, // "NBDMAGIC"
  Opt: 0x49484156454f5054n, // "IHAVEOPT"
  OptReply: 0x3e889045565a9n,
  Request: 0x25609513,
  SimpleReply: 0x67446698,
  StructuredReply: 0x668e33ef,
} as const;

export const HandshakeFlag = { FixedNewstyle: 1, NoZeroes: 2 } as const;

export const NbdOption = {
  ExportName: 1,
  Abort: 2,
  Go: 7,
  StructuredReply: 8,
  SetMetaContext: 10,
} as const;

export const OptionReply = {
  Ack: 1,
  Server: 2,
  Info: 3,
  MetaContext: 4,
} as const;

/** Option reply types with bit 31 set are errors. */
export const OPTION_REPLY_ERROR_BIT = 0x80000000;

export const NbdInfo = { Export: 0, Name: 1, Description: 2, BlockSize: 3 } as const;

export const TransmissionFlag = {
  HasFlags: 1 << 0,
  ReadOnly: 1 << 1,
  SendFlush: 1 << 2,
  SendFua: 1 << 3,
  Rotational: 1 << 4,
  SendTrim: 1 << 5,
  SendWriteZeroes: 1 << 6,
  SendDf: 1 << 7,
  CanMultiConn: 1 << 8,
} as const;

export const NbdCommand = { Read: 0, Write: 1, Disconnect: 2, Flush: 3, BlockStatus: 7 } as const;

export const ReplyChunk = {
  None: 0,
  OffsetData: 1,
  OffsetHole: 2,
  BlockStatus: 5,
  Error: 0x8001,
  ErrorOffset: 0x8002,
} as const;

export const REPLY_FLAG_DONE = 1;
export const REQUEST_HEADER_BYTES = 28;
export const SIMPLE_REPLY_BYTES = 16;
export const STRUCTURED_REPLY_BYTES = 20;

/** base:allocation extent flags. */
export const AllocationFlag = { Hole: 1, Zero: 2 } as const;

/** Names for the errno values NBD servers send (proto.md "Error values"). */
export const nbdErrnoNames: Record<number, string> = {
  1: 'EPERM',
  5: 'EIO',
  12: 'ENOMEM',
  22: 'EINVAL',
  28: 'ENOSPC',
  75: 'EOVERFLOW',
  95: 'ENOTSUP',
  108: 'ESHUTDOWN',
};
