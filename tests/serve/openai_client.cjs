// The npm `openai` client (version 6, installed into .deps by jobs/setup.sh) against
// `mom serve`, through its baseURL, as a user's tool would call it.
//
//   node tests/serve/openai_client.cjs OPENAI_MODULE_DIR BASE_URL API_KEY PROMPT MAX_TOKENS
//
// completions.create greedy without and with stream (routing "summary" passed through as an
// extra body field), and one request the server must refuse. Prints one JSON object: text,
// stream_text, stream_chunks, finish reasons, the routing summary's stages, usage, and the
// refusal's status and message.
const OpenAI = require(process.argv[2]);

async function main() {
  const [baseURL, apiKey, prompt, maxTokens] = process.argv.slice(3);
  const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 60000 });
  const params = { model: 'mom', prompt, max_tokens: Number(maxTokens), temperature: 0 };
  const out = {};

  const done = await client.completions.create({ ...params, routing: 'summary' });
  out.text = done.choices[0].text;
  out.finish_reason = done.choices[0].finish_reason;
  out.usage = done.usage;
  out.routing_stages = Object.keys(done.choices[0].routing?.summary ?? {});

  const stream = await client.completions.create({ ...params, stream: true, stream_options: { include_usage: true } });
  out.stream_text = '';
  out.stream_chunks = 0;
  for await (const chunk of stream) {
    out.stream_chunks += 1;
    if (chunk.usage) out.stream_usage = chunk.usage;
    for (const c of chunk.choices) {
      out.stream_text += c.text;
      if (c.finish_reason) out.stream_finish_reason = c.finish_reason;
    }
  }

  try {
    await client.completions.create({ ...params, max_tokens: -1 });
    out.refused = null;
  } catch (e) {
    out.refused = { status: e.status, message: e.message };
  }
  console.log(JSON.stringify(out));
}

main().catch((e) => {
  console.error(`openai_client: ${e.stack || e}`);
  process.exit(1);
});
