// The official TypeScript Foundry SDK against FOUNDRY_BASE_URL (the gateway), as an app would call it.
// Prints one JSON line per call with the ids the client saw, for tests/test_gateway_node.py to compare.
import { AnthropicFoundry } from '@anthropic-ai/foundry-sdk';

const client = new AnthropicFoundry({
  apiKey: process.env.FOUNDRY_API_KEY,
  baseURL: process.env.FOUNDRY_BASE_URL,
  defaultHeaders: { 'x-foundry-team': 'node-team', 'x-foundry-project': 'web', 'x-foundry-tags': 'lang=ts' },
});
const messages = [{ role: 'user', content: 'Summarize the quarterly numbers, please.' }];
const out = (line) => process.stdout.write(JSON.stringify(line) + '\n');

const created = await client.messages.create({ model: 'claude-sonnet-4-5', max_tokens: 64, messages });
out({ call: 'create', request_id: created._request_id, input: created.usage.input_tokens,
      output: created.usage.output_tokens });

const { data: stream, request_id: streamId, response } = await client.messages
  .create({ model: 'claude-haiku-4-5', max_tokens: 32, messages, stream: true }).withResponse();
let output = 0;
for await (const event of stream) {
  if (event.type === 'message_delta') output = event.usage.output_tokens;
}
out({ call: 'stream', request_id: streamId, apim_request_id: response.headers.get('apim-request-id'), output });

const helper = client.messages.stream({ model: 'claude-sonnet-4-5', max_tokens: 16, messages });
const final = await helper.finalMessage();
out({ call: 'messages.stream', request_id: helper.request_id, input: final.usage.input_tokens,
      output: final.usage.output_tokens });

try {
  await client.messages.create({ model: 'no-such-deployment', max_tokens: 8, messages });
  out({ call: 'error', unexpected: 'no error' });
} catch (err) {
  out({ call: 'error', status: err.status, request_id: err.requestID,
        apim_request_id: err.headers?.get('apim-request-id'), type: err.error?.error?.type });
}

const retried = await client.messages
  .create({ model: 'claude-sonnet-4-5', max_tokens: 8, messages }, { headers: { 'x-emulator-fault': '429;times=1' } })
  .withResponse();
out({ call: 'retried', request_id: retried.request_id,
      apim_request_id: retried.response.headers.get('apim-request-id') });
