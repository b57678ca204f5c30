// The jit sandbox page: renders what jit posted (Block Kit) and sends what people do back to the
// sandbox server, which signs it for jit as Slack would. Every text from a message is put in the
// page as text (textContent, text nodes), never as HTML: a message cannot add markup or script.
"use strict";

const TOKEN = document.querySelector('meta[name="jit-sandbox-token"]').content;
const EMOJI = {
  hourglass_flowing_sand: "⏳", hourglass: "⌛", gear: "⚙️", white_check_mark: "✅", lock: "🔒",
  no_entry: "⛔", x: "❌", alarm_clock: "⏰", leftwards_arrow_with_hook: "↩️", warning: "⚠️",
  robot_face: "🤖", rotating_light: "🚨", inbox_tray: "📥", bell: "🔔", key: "🔑",
  information_source: "ℹ️", memo: "📝", mag: "🔍", link: "🔗", clock3: "🕒", shield: "🛡️",
  scroll: "📜", wave: "👋", tada: "🎉", hourglass_done: "⌛", no_entry_sign: "🚫", ballot_box_with_check: "☑️",
};

const page = {
  me: localStorage.getItem("jit-sandbox-user") || "",
  place: localStorage.getItem("jit-sandbox-place") || "",
  snapshot: null,
  version: -1,
  typed: {}, // view id → block id → action id → text typed so far
  abort: null,
};

// ---------------------------------------------------------------- building elements

function el(tag, className, ...children) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

function decodeEntities(text) {
  return text.replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&amp;/g, "&");
}

function withEmoji(text) {
  return text.replace(/:([a-z0-9_+-]+):/g, (whole, name) => EMOJI[name] || whole);
}

// ---------------------------------------------------------------- mrkdwn, minimally

const SPECIAL = /<([^<>]*)>/g;
const FORMAT = /(?<![A-Za-z0-9])(`[^`\n]+`|\*[^*\n]+\*|_[^_\n]+_|~[^~\n]+~)(?![A-Za-z0-9])/g;
const TAGS = { "`": "code", "*": "strong", "_": "em", "~": "s" };

function mrkdwn(source) {
  const out = el("span", "mrkdwn");
  source.split("\n").forEach((line, i) => {
    if (i) out.append(document.createTextNode("\n"));
    const quoted = /^(>|&gt;) ?/.exec(line); // a quote: only at the start of a line
    const into = quoted ? out.appendChild(el("span", "quote")) : out;
    specials(quoted ? line.slice(quoted[0].length) : line, into);
  });
  return out;
}

function specials(line, out) {
  let last = 0;
  for (const m of line.matchAll(SPECIAL)) {
    inline(line.slice(last, m.index), out);
    out.append(special(m[1]));
    last = m.index + m[0].length;
  }
  inline(line.slice(last), out);
}

function inline(text, out) {
  let last = 0;
  for (const m of text.matchAll(FORMAT)) {
    out.append(document.createTextNode(withEmoji(decodeEntities(text.slice(last, m.index)))));
    const marker = m[0][0];
    const inner = m[0].slice(1, -1);
    const node = el(TAGS[marker], null);
    if (marker === "`") node.textContent = decodeEntities(inner); // nothing formats inside code
    else inline(inner, node);
    out.append(node);
    last = m.index + m[0].length;
  }
  out.append(document.createTextNode(withEmoji(decodeEntities(text.slice(last)))));
}

function special(inner) {
  const bar = inner.indexOf("|");
  const target = bar < 0 ? inner : inner.slice(0, bar);
  const label = bar < 0 ? "" : decodeEntities(inner.slice(bar + 1));
  if (/^@[UW][A-Z0-9]+$/.test(target)) return el("span", "mention", "@" + personName(target.slice(1)));
  if (target.startsWith("!subteam^")) {
    const group = (page.snapshot.groups || {})[target.slice(9)];
    return el("span", "mention", label || "@" + (group ? group.handle : target.slice(9)));
  }
  if (target.startsWith("!date^")) {
    const seconds = Number(target.split("^")[1]);
    const when = new Date(seconds * 1000);
    return el("span", "date", Number.isFinite(seconds) ? when.toLocaleString() : label);
  }
  if (["!channel", "!here", "!everyone"].includes(target)) return el("span", "mention", "@" + target.slice(1));
  if (target.startsWith("#")) return el("span", "mention", "#" + (label || channelName(target.slice(1))));
  const href = decodeEntities(target);
  const text = label || href;
  let url = null;
  try {
    url = new URL(href);
  } catch (e) {
    url = null;
  }
  if (!url || (url.protocol !== "https:" && url.protocol !== "http:")) return document.createTextNode(text);
  const a = el("a", null, text);
  a.href = url.href;
  a.target = "_blank";
  a.rel = "noopener noreferrer";
  return a;
}

function textObject(obj) {
  if (!obj || typeof obj.text !== "string") return el("span", null);
  if (obj.type === "mrkdwn") return mrkdwn(obj.text);
  return el("span", "plain", obj.emoji ? withEmoji(obj.text) : obj.text);
}

function personName(id) {
  const person = (page.snapshot.people || []).find((p) => p.id === id);
  if (person) return person.name;
  return id === page.snapshot.team.bot_user_id ? "jit" : id;
}

function channelName(id) {
  const channel = (page.snapshot.channels || []).find((c) => c.id === id);
  return channel ? channel.name : id;
}

// ---------------------------------------------------------------- Block Kit

function renderBlocks(blocks, where) {
  const box = el("div", "blocks");
  (Array.isArray(blocks) ? blocks : []).forEach((block, i) => box.append(renderBlock(block || {}, i, where)));
  return box;
}

function renderBlock(block, index, where) {
  switch (block.type) {
    case "header":
      return el("div", "bk-header", textObject(block.text));
    case "section": {
      const node = el("div", "bk-section");
      const body = el("div", "bk-section-body");
      if (block.text) body.append(el("div", "bk-text", textObject(block.text)));
      if (Array.isArray(block.fields)) {
        body.append(el("div", "bk-fields", ...block.fields.map((f) => el("div", "bk-field", textObject(f)))));
      }
      node.append(body);
      if (block.accessory && block.accessory.type === "button") {
        node.append(button(block.accessory, where, index, 0));
      }
      return node;
    }
    case "context":
      return el(
        "div",
        "bk-context",
        ...(block.elements || []).map((e) => (e.type === "image" ? el("span", null, e.alt_text || "") : textObject(e)))
      );
    case "divider":
      return el("hr", "bk-divider");
    case "actions":
      return el(
        "div",
        "bk-actions",
        ...(block.elements || []).map((e, j) =>
          e.type === "button" ? button(e, where, index, j) : el("span", "bk-unknown", `[${e.type}]`)
        )
      );
    case "input":
      return input(block, where);
    default:
      return el("div", "bk-unknown", `[a ${String(block.type)} block the sandbox does not draw]`);
  }
}

function button(element, where, blockIndex, elementIndex) {
  const style = element.style === "primary" || element.style === "danger" ? " " + element.style : "";
  const node = el("button", "bk-button" + style, (element.text && element.text.text) || "");
  node.type = "button";
  node.addEventListener("click", async () => {
    if (element.confirm && !(await confirmed(element.confirm))) return;
    node.disabled = true;
    await post("click", { where, block: blockIndex, element: elementIndex });
    node.disabled = false;
  });
  return node;
}

function input(block, where) {
  const element = block.element || {};
  const viewId = where.view_id;
  const saved = ((page.typed[viewId] || {})[block.block_id] || {})[element.action_id] || "";
  const field = element.multiline ? el("textarea", "bk-input") : el("input", "bk-input");
  field.value = saved;
  field.name = `${block.block_id}.${element.action_id}`;
  if (element.placeholder) field.placeholder = element.placeholder.text || "";
  if (element.max_length) field.maxLength = element.max_length;
  field.addEventListener("input", () => {
    const forView = (page.typed[viewId] = page.typed[viewId] || {});
    (forView[block.block_id] = forView[block.block_id] || {})[element.action_id] = field.value;
  });
  const box = el("label", "bk-input-block", el("span", "bk-label", textObject(block.label)), field);
  box.dataset.blockId = block.block_id;
  box.dataset.actionId = element.action_id;
  box.dataset.optional = block.optional ? "1" : "";
  box.dataset.minLength = element.min_length || 0;
  if (block.hint) box.append(el("span", "bk-hint", textObject(block.hint)));
  const error = (where.errors || {})[block.block_id];
  if (error) box.append(el("span", "bk-error", error));
  return box;
}

// ---------------------------------------------------------------- dialogs

function confirmed(confirm) {
  const dialog = document.getElementById("confirm");
  dialog.replaceChildren(
    el("h3", null, textObject(confirm.title)),
    el("p", null, textObject(confirm.text)),
    el(
      "div",
      "dialog-buttons",
      el("button", "bk-button", (confirm.deny && confirm.deny.text) || "Cancel"),
      el("button", "bk-button danger", (confirm.confirm && confirm.confirm.text) || "Yes")
    )
  );
  const [deny, yes] = dialog.querySelectorAll("button");
  dialog.showModal();
  return new Promise((resolve) => {
    deny.onclick = () => { dialog.close(); resolve(false); };
    yes.onclick = () => { dialog.close(); resolve(true); };
  });
}

function renderModal(view) {
  const dialog = document.getElementById("modal");
  if (!view) {
    if (dialog.open) dialog.close();
    dialog.dataset.viewId = "";
    dialog.dataset.key = "";
    return;
  }
  const key = JSON.stringify([view.id, view.hash, view.errors || {}]);
  if (dialog.open && dialog.dataset.key === key) return; // unchanged: keep what is being typed, and the focus
  dialog.dataset.key = key;
  const where = { kind: "modal", view_id: view.id, errors: view.errors || {} };
  const submit = el("button", "bk-button primary", (view.submit && view.submit.text) || "Submit");
  submit.id = "modal-submit";
  const cancel = el("button", "bk-button", (view.close && view.close.text) || "Cancel");
  cancel.id = "modal-cancel";
  const form = el("form", null, renderBlocks(view.blocks, where), el("div", "dialog-buttons", cancel, submit));
  form.addEventListener("submit", (e) => e.preventDefault());
  cancel.type = "button";
  cancel.onclick = () => post("close", { view_id: view.id });
  submit.type = "button";
  submit.onclick = () => submitModal(view, form);
  dialog.replaceChildren(el("h3", "modal-title", textObject(view.title)), form);
  dialog.dataset.viewId = view.id;
  if (!dialog.open) dialog.showModal();
  dialog.oncancel = (e) => { e.preventDefault(); post("close", { view_id: view.id }); };
}

function submitModal(view, form) {
  // Slack checks required inputs and minimum lengths before anything is sent
  let ok = true;
  const values = {};
  for (const box of form.querySelectorAll(".bk-input-block")) {
    const text = box.querySelector(".bk-input").value;
    box.querySelectorAll(".bk-error.local").forEach((n) => n.remove());
    let problem = "";
    if (!text.trim() && !box.dataset.optional) problem = "Please fill out this field.";
    else if (text && text.length < Number(box.dataset.minLength)) {
      problem = `Must be at least ${box.dataset.minLength} characters.`;
    }
    if (problem) {
      box.append(el("span", "bk-error local", problem));
      ok = false;
    }
    (values[box.dataset.blockId] = values[box.dataset.blockId] || {})[box.dataset.actionId] = text;
  }
  if (ok) post("submit", { view_id: view.id, values });
}

// ---------------------------------------------------------------- the page

function render() {
  const s = page.snapshot;
  document.body.dataset.me = page.me;
  const me = document.getElementById("me");
  if (!me.options.length) {
    for (const p of s.people) {
      const option = el("option", null, `${p.name} — ${p.role}`);
      option.value = p.id;
      me.append(option);
    }
  }
  me.value = page.me;
  const places = s.channels.map((c) => c.id);
  if (page.place !== "home" && !places.includes(page.place)) page.place = places[0] || "home";
  renderSidebar(s);
  renderNotes(s);
  const feed = document.getElementById("feed");
  const keepBottom = feed.scrollHeight - feed.scrollTop - feed.clientHeight < 40;
  feed.replaceChildren(page.place === "home" ? renderHome(s) : renderChannel(s, page.place));
  if (keepBottom) feed.scrollTop = feed.scrollHeight;
  document.getElementById("composer").hidden = page.place === "home";
  renderModal(s.modal);
}

function renderSidebar(s) {
  const nav = document.getElementById("sidebar");
  const entry = (id, label) => {
    const a = el("button", "place" + (page.place === id ? " current" : ""), label);
    a.type = "button";
    a.dataset.place = id;
    a.onclick = () => goTo(id);
    return a;
  };
  nav.replaceChildren(
    el("h3", null, "Channels"),
    ...s.channels.filter((c) => !c.dm).map((c) => entry(c.id, "# " + c.name)),
    el("h3", null, "Direct messages"),
    ...s.channels.filter((c) => c.dm).map((c) => entry(c.id, c.name)),
    el("h3", null, "Apps"),
    entry("home", "jit — Home")
  );
  const here = s.channels.find((c) => c.id === page.place);
  document.getElementById("where").textContent =
    page.place === "home" ? "jit — Home" : here ? (here.dm ? "" : "# ") + here.name : "";
}

function renderNotes(s) {
  const box = document.getElementById("notes");
  box.replaceChildren(...s.notes.slice(-3).reverse().map((n) => el("div", "note", "sandbox: " + n.text)));
}

function renderChannel(s, channel) {
  const list = el("div", "messages");
  const top = s.messages.filter((m) => m.channel === channel && (!m.thread_ts || m.thread_ts === m.ts));
  const replies = s.messages.filter((m) => m.channel === channel && m.thread_ts && m.thread_ts !== m.ts);
  const mine = s.ephemerals.filter((e) => e.channel === channel);
  const items = [...top.map((m) => ({ ts: m.ts, m })), ...mine.map((e) => ({ ts: e.ts, e }))];
  items.sort((a, b) => Number(a.ts) - Number(b.ts));
  for (const item of items) {
    if (item.m) {
      const node = message(item.m, { kind: "message", ts: item.m.ts });
      const thread = replies.filter((r) => r.thread_ts === item.m.ts);
      if (thread.length) {
        node.append(el("div", "thread", ...thread.map((r) => message(r, { kind: "message", ts: r.ts }))));
      }
      list.append(node);
    } else {
      list.append(ephemeral(item.e));
    }
  }
  if (!items.length) list.append(el("p", "empty", "Nothing here yet. Ask for access with the curl `jit dev` printed."));
  return list;
}

function stamp(ts) {
  return new Date(Number(ts) * 1000).toLocaleTimeString();
}

function message(m, where) {
  const body = m.blocks && m.blocks.length ? renderBlocks(m.blocks, where) : el("div", "bk-text", mrkdwn(m.text || ""));
  const node = el(
    "article",
    "message",
    el("div", "meta", el("strong", null, "jit"), el("span", "app", "APP"), el("time", null, stamp(m.ts)),
      m.edited ? el("span", "edited", "(edited)") : null),
    body
  );
  node.dataset.ts = m.ts;
  return node;
}

function ephemeral(e) {
  const where = { kind: "ephemeral", ts: e.ts };
  const body = e.blocks && e.blocks.length ? renderBlocks(e.blocks, where) : el("div", "bk-text", mrkdwn(e.text || ""));
  const node = el(
    "article",
    "message ephemeral",
    el("div", "meta", el("strong", null, "jit"), el("span", "app", "APP"), el("time", null, stamp(e.ts)),
      el("span", "only-you", "Only visible to you")),
    e.command ? el("div", "command-echo", e.command) : null,
    body
  );
  node.dataset.ts = e.ts;
  return node;
}

function renderHome(s) {
  if (!s.home) return el("p", "empty", "Opening jit's Home tab…");
  const node = el("div", "home", renderBlocks(s.home.blocks, { kind: "home", view_id: s.home.id }));
  return node;
}

function goTo(place) {
  page.place = place;
  localStorage.setItem("jit-sandbox-place", place);
  if (place === "home") post("home", {});
  render();
}

// ---------------------------------------------------------------- talking to the sandbox

async function post(what, body) {
  try {
    const resp = await fetch(`/ui/${what}`, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Sandbox-Token": TOKEN },
      body: JSON.stringify({ user: page.me, ...body }),
    });
    if (!resp.ok) {
      const problem = await resp.json().catch(() => ({}));
      showLocalNote(`the sandbox refused that: ${problem.error || resp.status}`);
    }
  } catch (e) {
    showLocalNote("the sandbox is not answering (is jit dev still running?)");
  }
}

function showLocalNote(text) {
  document.getElementById("notes").prepend(el("div", "note", "sandbox: " + text));
}

async function follow() {
  for (;;) {
    page.abort = new AbortController();
    try {
      const resp = await fetch(`/ui/state?user=${encodeURIComponent(page.me)}&since=${page.version}`, {
        headers: { "X-Sandbox-Token": TOKEN },
        signal: page.abort.signal,
      });
      if (resp.status === 404 && page.me) {
        switchUser(""); // a user this workspace no longer has: start as its first person
        continue;
      }
      if (!resp.ok) throw new Error(String(resp.status));
      const snapshot = await resp.json();
      if (page.me && snapshot.me !== page.me) continue; // an answer for whoever we were before switching
      page.snapshot = snapshot;
      page.version = snapshot.version;
      page.me = snapshot.me;
      render();
    } catch (e) {
      if (e.name !== "AbortError") await new Promise((r) => setTimeout(r, 1000));
    }
  }
}

function switchUser(user) {
  page.me = user;
  page.version = -1;
  page.snapshot = null;
  localStorage.setItem("jit-sandbox-user", user);
  if (page.abort) page.abort.abort();
  if (page.place === "home") post("home", {});
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("me").addEventListener("change", (e) => switchUser(e.target.value));
  document.getElementById("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const field = document.getElementById("command");
    const text = field.value.trim();
    if (!text) return;
    field.value = "";
    post("command", { channel: page.place, text });
  });
  follow();
});
