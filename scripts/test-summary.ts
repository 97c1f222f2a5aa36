// Prints vitest's result as the plain closing line CI reads: "Tests: N passed, N failed, N skipped".
import { readFileSync } from 'node:fs';
import { z } from 'zod';

const Report = z.object({ numPassedTests: z.number(), numFailedTests: z.number(), numPendingTests: z.number(), numTodoTests: z.number() });
const report = Report.parse(JSON.parse(readFileSync(process.argv[2] ?? '.cache/vitest.json', 'utf8')));
console.log(`Tests: ${report.numPassedTests} passed, ${report.numFailedTests} failed, ${report.numPendingTests + report.numTodoTests} skipped`);
