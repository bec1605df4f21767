// Fails CI when any test was skipped, left as todo, or did not run: every test talks to real peers
// and none may quietly drop out.
import { readFileSync } from 'node:fs';

const report = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const { numPassedTests: passed, numFailedTests: failed, numPendingTests: skipped, numTodoTests: todo, numTotalTests: total } = report;
const notRun = [];
for (const file of report.testResults) {
  for (const t of file.assertionResults) if (t.status !== 'passed' && t.status !== 'failed') notRun.push(`${t.status}: ${file.name} > ${t.fullName}`);
}
console.log(`${passed} passed, ${failed} failed, ${skipped + todo} skipped`);
if (notRun.length > 0 || skipped + todo > 0 || passed + failed !== total || total === 0) {
  console.error('tests that did not run:\n' + notRun.join('\n'));
  process.exit(1);
}
process.exit(failed > 0 ? 1 : 0);
