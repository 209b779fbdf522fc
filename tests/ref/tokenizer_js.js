// Encodes strings with the gpt-3-encoder npm package, an independent JavaScript GPT-2
// tokenizer, for tests/test_tokenizer.cpp.
// Usage: node tokenizer_js.js PACKAGE_DIR IN.json OUT.json
//   IN.json: array of strings; OUT.json: array of token id arrays, one per string.
const fs = require('fs');
const path = require('path');

const [packageDir, inPath, outPath] = process.argv.slice(2);
const { encode } = require(path.resolve(packageDir, 'index.js'));
const texts = JSON.parse(fs.readFileSync(inPath, 'utf-8'));
fs.writeFileSync(outPath, JSON.stringify(texts.map((t) => encode(t))));
