import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['src/**/*.test.ts', 'sim/**/*.test.ts', 'test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    // Two cores: integration tests start qemu-nbd, tgtd and simulators; keep file parallelism modest.
    maxWorkers: 2,
    reporters: ['default'],
  },
});
