/** Validates JSON against a definition of the published v3 swagger files in ../shared/specs, with ajv. */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Ajv } from 'ajv';
import { parse } from 'yaml';

const specDir = join(import.meta.dirname, '../../../shared/specs/prism-v3');
const ajv = new Ajv({ strict: false, validateFormats: false, allErrors: true });
// Swagger 2.0 marks nullable-free optional fields; extra fields are allowed unless the definition says otherwise.
ajv.addSchema({ ...JSON.parse(readFileSync(join(specDir, 'prism-central-v3.json'), 'utf8')), $id: 'pc' });
ajv.addSchema({ ...(parse(readFileSync(join(specDir, 'prism-element-v3-pe5.6.yaml'), 'utf8')) as object), $id: 'pe' });

/** Error text, or undefined when `value` is valid against `spec#/definitions/<definition>`. */
export function swaggerErrors(spec: 'pc' | 'pe', definition: string, value: unknown): string | undefined {
  const validate = ajv.getSchema(`${spec}#/definitions/${definition}`);
  if (!validate) throw new Error(`no definition ${definition} in ${spec}`);
  return validate(value) ? undefined : ajv.errorsText(validate.errors);
}
