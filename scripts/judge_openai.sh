#!/usr/bin/env bash
# An LLM judge for `sdxl eval --judge-cmd scripts/judge_openai.sh`: asks a vision model behind an
# OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, Ollama, OpenRouter, ...) how well the
# image matches its prompt, and prints {"score": n, "reason": "..."} as the protocol in eval.h asks.
#
#   OPENAI_BASE_URL   e.g. https://api.openai.com/v1 (default) or http://localhost:11434/v1
#   OPENAI_API_KEY    the key, when the endpoint needs one
#   JUDGE_MODEL       e.g. gpt-4o (default)
# sdxl eval sets SDXL_JUDGE_IMAGE and SDXL_JUDGE_PROMPT. Needs curl, base64 and python3 (for JSON).
set -euo pipefail
: "${SDXL_JUDGE_IMAGE:?run by sdxl eval --judge-cmd}" "${SDXL_JUDGE_PROMPT:?run by sdxl eval --judge-cmd}"
BASE="${OPENAI_BASE_URL:-https://api.openai.com/v1}"
MODEL="${JUDGE_MODEL:-gpt-4o}"
body=$(mktemp)
trap 'rm -f "$body"' EXIT
python3 - "$SDXL_JUDGE_IMAGE" "$SDXL_JUDGE_PROMPT" "$MODEL" >"$body" <<'PY'
import base64, json, sys
image, prompt, model = sys.argv[1:4]
b64 = base64.b64encode(open(image, "rb").read()).decode()
question = ("Rate from 1 to 10 how well this black-and-white storyboard frame depicts the prompt: "
            f"{json.dumps(prompt)}. 10 means every element of the prompt is clearly drawn. "
            'Reply only with JSON: {"score": <integer 1-10>, "reason": "<one sentence>"}')
print(json.dumps({"model": model, "temperature": 0, "max_tokens": 200,
                  "response_format": {"type": "json_object"},
                  "messages": [{"role": "user", "content": [
                      {"type": "text", "text": question},
                      {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64}}]}]}))
PY
response=$(curl -sS --max-time 120 "$BASE/chat/completions" -H "Content-Type: application/json" \
  ${OPENAI_API_KEY:+-H "Authorization: Bearer $OPENAI_API_KEY"} --data-binary @"$body")
# the model's answer is choices[0].message.content; print it as one JSON line, or one line saying
# what went wrong (sdxl eval records it as this image's judge failure)
python3 -c 'import json, sys
try:
    r = json.loads(sys.argv[1])
except ValueError:
    sys.exit("judge_openai.sh: the endpoint answered with something that is not JSON: " + sys.argv[1][:200].replace("\n", " "))
if "error" in r:
    sys.exit("judge_openai.sh: the endpoint refused: " + json.dumps(r["error"])[:200])
c = r["choices"][0]["message"]["content"]
try:
    print(json.dumps(json.loads(c)))
except ValueError:
    print(c.strip().replace("\n", " "))   # not JSON: sdxl eval still accepts a "score: n" answer' "$response"
