import { pino, type Logger } from 'pino';

/** Paths pino masks wherever they appear in a log record: credentials never reach the logs. */
export const redactPaths = [
  'password',
  '*.password',
  'authorization',
  '*.authorization',
  'headers.authorization',
  'headers.cookie',
  '*.headers.authorization',
  '*.headers.cookie',
  'cookie',
  '*.cookie',
  'token',
  '*.token',
  'jwtToken',
  '*.jwtToken',
  'secret',
  '*.secret',
];

export function createLogger(options: { level?: string; name?: string } = {}): Logger {
  return pino(
    {
      name: options.name ?? 'sendense-nutanix',
      level: options.level ?? process.env.LOG_LEVEL ?? 'info',
      redact: { paths: redactPaths, censor: '[redacted]' },
    },
    pino.destination({ dest: 2, sync: true }),
  );
}

export type { Logger };
