// The comparison page: shows one pair, sends the judgement, shows the next pair.
// Texts are set with textContent only: nothing from a pair is parsed as HTML.
"use strict";
const csrf = document.querySelector('meta[name="csrf-token"]').content;
const $ = (id) => document.getElementById(id);
let current = null;
let busy = false;

function promptText(prompt) {
  if (typeof prompt === "string") return prompt;
  return prompt.map((m) => m.role + ": " + m.content).join("\n");
}

function show(reply) {
  const p = reply.progress;
  $("progress").textContent = "done " + p.done + " / " + p.total + " (yours: " + p.mine + ")";
  current = reply.pair;
  if (!current) {
    $("task").hidden = true;
    $("done").hidden = false;
    return;
  }
  $("prompt").textContent = promptText(current.prompt);
  $("left").textContent = current.left;
  $("right").textContent = current.right;
  $("note").value = "";
  document.querySelectorAll('input[name="tag"]').forEach((box) => { box.checked = false; });
  document.body.dataset.pairId = current.id;
}

async function call(url, body) {
  const options = body === undefined ? {} : {
    method: "POST", body: JSON.stringify(body),
    headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
  };
  const reply = await fetch(url, options);
  if (!reply.ok) throw new Error(reply.status + " " + (await reply.text()));
  return reply.json();
}

async function judge(choice) {
  if (busy || !current) return;
  busy = true;
  const tags = [...document.querySelectorAll('input[name="tag"]:checked')].map((box) => box.value);
  try {
    show(await call("/api/judge", {pair_id: current.id, choice: choice, note: $("note").value, tags: tags}));
    $("error").textContent = "";
  } catch (err) {
    $("error").textContent = "not saved: " + err.message;
  } finally {
    busy = false;
  }
}

document.querySelectorAll("button[data-choice]").forEach((b) => {
  b.addEventListener("click", () => judge(b.dataset.choice));
});
const KEYS = {"1": "left", "2": "right", "t": "tie", "s": "skip"};
document.addEventListener("keydown", (e) => {
  if (e.target === $("note")) {
    if (e.key === "Escape") $("note").blur();
    return;
  }
  if (e.ctrlKey || e.altKey || e.metaKey) return;
  if (e.key === "n") { e.preventDefault(); $("note").focus(); return; }
  if (KEYS[e.key]) { e.preventDefault(); judge(KEYS[e.key]); }
});
call("/api/next").then(show).catch((err) => { $("error").textContent = err.message; });
