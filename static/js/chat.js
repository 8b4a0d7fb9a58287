// AgentsFlowAI browser chat: REST for lists, the WebSocket (docs/streaming.md) for replies.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const root = $("chat");
  const maxChars = Number(root.dataset.maxChars);
  const state = {
    conversationId: null,
    nextCursor: null,
    search: "",
    socket: null,
    retry: 0,
    inFlight: new Map(), // reply id -> {seq, node}
    pendingClient: new Map(), // client_id -> placeholder node
  };

  function csrfToken() {
    const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  async function api(path, options = {}) {
    const headers = { Accept: "application/json", ...(options.headers || {}) };
    if (options.body !== undefined) headers["Content-Type"] = "application/json";
    if (options.method && options.method !== "GET") headers["X-CSRFToken"] = csrfToken();
    const response = await fetch(path, {
      credentials: "same-origin",
      ...options,
      headers,
      body: options.body === undefined ? undefined : JSON.stringify(options.body),
    });
    if (response.status === 204) return null;
    const data = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(data.message || `Request failed (${response.status})`);
    return data;
  }

  function setStatus(text) {
    $("status").textContent = text;
  }

  // --- models -----------------------------------------------------------------------
  async function loadModels() {
    const models = await api("/api/models");
    const select = $("model");
    select.replaceChildren();
    for (const model of models.filter((m) => m.available)) {
      const option = new Option(model.name, model.name);
      option.title = model.description;
      select.append(option);
    }
  }

  // --- conversations -------------------------------------------------------------------
  async function loadConversations(append = false) {
    const params = new URLSearchParams();
    if (state.search) params.set("q", state.search);
    if (append && state.nextCursor) params.set("cursor", state.nextCursor);
    const page = await api(`/api/conversations?${params}`);
    const list = $("conversations");
    if (!append) list.replaceChildren();
    for (const conversation of page.results) list.append(conversationItem(conversation));
    state.nextCursor = page.next;
    $("more").hidden = !page.next;
  }

  function conversationItem(conversation) {
    const item = document.createElement("li");
    item.textContent = conversation.title || `Conversation ${conversation.id}`;
    item.dataset.id = conversation.id;
    item.classList.toggle("active", conversation.id === state.conversationId);
    item.addEventListener("click", () => openConversation(conversation));
    return item;
  }

  async function openConversation(conversation) {
    state.conversationId = conversation.id;
    $("title").textContent = conversation.title || `Conversation ${conversation.id}`;
    if ([...$("model").options].some((o) => o.value === conversation.model_name)) $("model").value = conversation.model_name;
    for (const item of $("conversations").children) item.classList.toggle("active", Number(item.dataset.id) === conversation.id);
    const list = $("messages");
    list.replaceChildren();
    let cursor = null;
    do {
      const page = await api(`/api/conversations/${conversation.id}/messages?page_size=500${cursor ? `&cursor=${cursor}` : ""}`);
      for (const message of page.results) {
        if (message.role === "system") continue;
        const node = messageNode(message.role, message.content, message);
        list.append(node);
        if (message.status === "streaming") state.inFlight.set(message.id, { seq: 0, node });
      }
      cursor = page.next;
    } while (cursor);
    send({ type: "subscribe", conversation_id: conversation.id });
    for (const [id, entry] of state.inFlight) send({ type: "resume", message_id: id, last_seq: entry.seq });
    scrollDown();
    updateButtons();
  }

  function newChat() {
    state.conversationId = null;
    $("title").textContent = "New chat";
    $("messages").replaceChildren(emptyNote());
    for (const item of $("conversations").children) item.classList.remove("active");
    $("input").focus();
  }

  function emptyNote() {
    const note = document.createElement("li");
    note.className = "empty";
    note.textContent = "Ask anything. Replies stream as they are written.";
    return note;
  }

  // --- messages ---------------------------------------------------------------------------
  function messageNode(role, text, message = {}) {
    const node = document.createElement("li");
    node.className = `msg ${role}`;
    const body = document.createElement("div");
    body.className = "body";
    body.textContent = text; // never innerHTML: model output is untrusted
    node.append(body);
    const meta = document.createElement("div");
    meta.className = "meta";
    node.append(meta);
    if (message.id) node.dataset.id = message.id;
    if (role === "assistant") renderMeta(node, message);
    return node;
  }

  function renderMeta(node, message) {
    const meta = node.querySelector(".meta");
    meta.replaceChildren();
    node.classList.toggle("error", message.status === "error");
    const parts = [];
    if (message.model_name || message.model) parts.push(message.model_name || message.model);
    if (message.status && message.status !== "complete") parts.push(message.status);
    if (message.error || message.message) parts.push(message.error || message.message);
    const usage = message.usage || {};
    const tokens = message.completion_tokens ?? usage.completion_tokens;
    if (tokens) parts.push(`${tokens} tokens`);
    const info = document.createElement("span");
    info.textContent = parts.join(" · ");
    meta.append(info);
    if (message.status && message.status !== "streaming" && node.dataset.id) {
      const again = document.createElement("button");
      again.type = "button";
      again.textContent = "Regenerate";
      again.addEventListener("click", () => send({ type: "regenerate", message_id: Number(node.dataset.id) }));
      meta.append(again);
    }
  }

  function scrollDown() {
    const list = $("messages");
    list.scrollTop = list.scrollHeight;
  }

  function updateButtons() {
    $("stop").hidden = state.inFlight.size === 0;
    $("send").disabled = !state.socket || state.socket.readyState !== WebSocket.OPEN;
  }

  // --- the socket ----------------------------------------------------------------------------
  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/ws/chat/`);
    state.socket = socket;
    setStatus("connecting…");
    socket.addEventListener("open", () => {
      state.retry = 0;
      setStatus("");
      updateButtons();
      if (state.conversationId) send({ type: "subscribe", conversation_id: state.conversationId });
      for (const [id, entry] of state.inFlight) send({ type: "resume", message_id: id, last_seq: entry.seq });
    });
    socket.addEventListener("message", (event) => handle(JSON.parse(event.data)));
    socket.addEventListener("close", (event) => {
      updateButtons();
      if (event.code === 4401) {
        setStatus("signed out");
        location.href = "/accounts/login/?next=/";
        return;
      }
      const delay = Math.min(10000, 500 * 2 ** state.retry++);
      setStatus(`reconnecting in ${Math.round(delay / 1000)} s…`);
      setTimeout(connect, delay);
    });
  }

  function send(message) {
    if (state.socket && state.socket.readyState === WebSocket.OPEN) state.socket.send(JSON.stringify(message));
  }

  function handle(event) {
    switch (event.type) {
      case "ready":
      case "pong":
      case "subscribed":
        return;
      case "accepted":
        return accepted(event);
      case "start":
      case "delta":
      case "fallback":
      case "done":
        return replyEvent(event);
      case "error":
        return event.message_id ? replyEvent(event) : requestError(event);
    }
  }

  function accepted(event) {
    const placeholder = state.pendingClient.get(event.client_id);
    state.pendingClient.delete(event.client_id);
    if (placeholder) placeholder.dataset.id = event.user_message_id;
    const firstMessage = state.conversationId === null;
    state.conversationId = event.conversation_id;
    if (firstMessage) loadConversations().then(() => {
      const item = [...$("conversations").children].find((li) => Number(li.dataset.id) === event.conversation_id);
      if (item) {
        item.classList.add("active");
        $("title").textContent = item.textContent;
      }
    });
    ensureReply(event.message_id);
  }

  function ensureReply(id) {
    let entry = state.inFlight.get(id);
    if (!entry) {
      let node = $("messages").querySelector(`li.msg[data-id="${id}"]`);
      if (!node) {
        node = messageNode("assistant", "", { id, status: "streaming" });
        $("messages").append(node);
      }
      entry = { seq: 0, node };
      state.inFlight.set(id, entry);
    }
    return entry;
  }

  function replyEvent(event) {
    if (event.conversation_id !== state.conversationId) return; // another conversation's stream
    const entry = ensureReply(event.message_id);
    if (event.seq <= entry.seq) return;
    entry.seq = event.seq;
    const body = entry.node.querySelector(".body");
    if (event.type === "delta") {
      body.textContent += event.text;
      setStatus("writing…");
    } else if (event.type === "start") {
      renderMeta(entry.node, { model: event.model, status: "streaming" });
    } else if (event.type === "fallback") {
      renderMeta(entry.node, { model: event.model, status: "streaming" });
    } else {
      if (typeof event.content === "string") body.textContent = event.content;
      renderMeta(entry.node, event);
      state.inFlight.delete(event.message_id);
      setStatus("");
    }
    scrollDown();
    updateButtons();
  }

  function requestError(event) {
    const placeholder = state.pendingClient.get(event.client_id);
    if (placeholder) {
      placeholder.remove();
      state.pendingClient.delete(event.client_id);
    }
    const details = event.details ? ` ${Object.values(event.details).flat().join(" ")}` : "";
    setStatus(`${event.message}${details}`);
  }

  // --- composing -----------------------------------------------------------------------------
  function submit(event) {
    event.preventDefault();
    const input = $("input");
    const content = input.value;
    if (!content.trim()) return;
    if (content.length > maxChars) {
      setStatus(`The message is over ${maxChars} characters.`);
      return;
    }
    const clientId = crypto.randomUUID ? crypto.randomUUID() : String(Date.now() + Math.random());
    const list = $("messages");
    list.querySelector(".empty")?.remove();
    const node = messageNode("user", content);
    list.append(node);
    state.pendingClient.set(clientId, node);
    send({
      type: "send",
      content,
      client_id: clientId,
      model: $("model").value || undefined,
      conversation_id: state.conversationId || undefined,
    });
    input.value = "";
    updateCounter();
    scrollDown();
  }

  function updateCounter() {
    const length = $("input").value.length;
    $("counter").textContent = length > maxChars * 0.8 ? `${length} / ${maxChars}` : "";
  }

  $("composer").addEventListener("submit", submit);
  $("input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) submit(event);
  });
  $("input").addEventListener("input", updateCounter);
  $("stop").addEventListener("click", () => {
    for (const id of state.inFlight.keys()) send({ type: "cancel", message_id: id });
  });
  $("new-chat").addEventListener("click", newChat);
  $("more").addEventListener("click", () => loadConversations(true));
  let searchTimer = null;
  $("search").addEventListener("input", (event) => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => {
      state.search = event.target.value.trim();
      loadConversations();
    }, 250);
  });

  newChat();
  connect();
  Promise.all([loadModels(), loadConversations()]).catch((error) => setStatus(error.message));
})();
