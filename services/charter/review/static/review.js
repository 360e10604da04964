// The reviewer page. Every piece of model text goes onto the page with textContent, never parsed as HTML.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const BLIND_KEY = "charter.review.blind";
  const ROLE_LABELS = { user: "User", assistant: "Assistant", system: "System" };
  const CHOICE_LABELS = { A: "A is better", B: "B is better", tie: "Tie", unsafe_both: "Both unsafe", skip: "Skipped" };
  const KEYS = {
    a: "A", 1: "A",
    b: "B", 2: "B",
    t: "tie", 3: "tie",
    u: "unsafe_both", 4: "unsafe_both",
    s: "skip",
  };

  let current = null; // the claimed item
  let busy = false;
  let leaseDeadline = 0;
  let leaseTimer = 0;

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(path, body) {
    const init = { credentials: "same-origin", headers: { accept: "application/json" } };
    if (body !== undefined) {
      init.method = "POST";
      init.headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      throw new ApiError(0, "The review service cannot be reached; check your connection.");
    }
    let data = null;
    try {
      data = await response.json();
    } catch (err) {
      data = null;
    }
    if (response.status === 401) {
      window.location.assign("/login");
    }
    if (!response.ok) {
      throw new ApiError(response.status, (data && data.error) || `${response.status} ${response.statusText}`);
    }
    return data;
  }

  function setStatus(text, kind) {
    const el = $("status");
    el.textContent = text || "";
    el.className = "status" + (kind ? ` status-${kind}` : "");
  }

  const percent = (x) => `${Math.round(x * 100)}%`;

  function showStats(stats) {
    $("queue-depth").textContent = String(stats.queue_depth);
    $("my-decisions").textContent = String(stats.decisions);
    const a = stats.with_ai;
    $("my-agreement").textContent = a.pairs ? `${percent(a.agreement)} (${a.pairs} ${a.pairs === 1 ? "pair" : "pairs"})` : "–";
    $("my-kappa").textContent = a.pairs ? a.kappa.toFixed(2) : "–";
  }

  async function refreshStats() {
    try {
      showStats(await api("/api/stats"));
    } catch (err) {
      setStatus(err.message, "error");
    }
  }

  // -- blind review ---------------------------------------------------------------------------

  function setBlind(on) {
    document.body.classList.toggle("blind", on);
    $("blind").checked = on;
    try {
      window.localStorage.setItem(BLIND_KEY, on ? "1" : "0");
    } catch (err) {
      // storage may be disabled; the toggle still works for this page
    }
  }

  function storedBlind() {
    try {
      return window.localStorage.getItem(BLIND_KEY) === "1";
    } catch (err) {
      return false;
    }
  }

  // -- the item --------------------------------------------------------------------------------

  function textBlock(className, text) {
    const div = document.createElement("div");
    div.className = className;
    div.textContent = text;
    return div;
  }

  function chip(text, className) {
    const span = document.createElement("span");
    span.className = className || "chip";
    span.textContent = text;
    return span;
  }

  function showItem(item) {
    current = item;
    $("item-id").textContent = item.item_id;
    $("reason").textContent = item.reason.replace(/_/g, " ");
    $("progress").textContent = `${item.decisions_received} of ${item.decisions_needed} done`;
    $("principles").replaceChildren(
      ...(item.principle_ids.length ? item.principle_ids : ["(none)"]).map((p) => chip(p)),
    );

    const turns = item.conversation.map((turn) => {
      const li = document.createElement("li");
      const role = Object.hasOwn(ROLE_LABELS, turn.role) ? turn.role : "other";
      li.className = `turn turn-${role}`;
      li.append(textBlock("who", ROLE_LABELS[turn.role] || turn.role), textBlock("text", turn.content));
      return li;
    });
    if (!turns.length) {
      turns.push(textBlock("muted", "(no conversation recorded)"));
    }
    $("conversation").replaceChildren(...turns);
    $("response-a").textContent = item.response_a;
    $("response-b").textContent = item.response_b;

    const ai = item.ai;
    $("pa-fill").style.width = `${Math.max(0, Math.min(1, ai.p_a)) * 100}%`;
    $("ai-pa").textContent = percent(ai.p_a);
    $("ai-choice").textContent = ai.choice;
    $("ai-confidence").textContent = ai.confidence.toFixed(2);
    $("ai-swap").textContent = ai.swap_consistent ? "yes" : "no";
    $("ai-status").textContent = ai.status_detail ? `${ai.status}: ${ai.status_detail}` : ai.status;

    $("comment").value = "";
    $("empty").hidden = true;
    $("item").hidden = false;
    $("next").disabled = true;
    startLease(item.lease_seconds_left);
  }

  function clearItem(message) {
    current = null;
    stopLease();
    $("item").hidden = true;
    $("empty").hidden = false;
    $("next").disabled = false;
    if (message) {
      $("empty").querySelector("p").textContent = message;
    }
  }

  function startLease(seconds) {
    stopLease();
    leaseDeadline = performance.now() + seconds * 1000;
    $("lease").hidden = false;
    tickLease();
    leaseTimer = window.setInterval(tickLease, 1000);
  }

  function stopLease() {
    window.clearInterval(leaseTimer);
    $("lease").hidden = true;
  }

  function tickLease() {
    const left = Math.max(0, Math.round((leaseDeadline - performance.now()) / 1000));
    const el = $("lease");
    if (left === 0) {
      el.textContent = "Lease expired: claim the item again";
      el.classList.add("lease-expired");
      return;
    }
    const minutes = Math.floor(left / 60);
    const seconds = String(left % 60).padStart(2, "0");
    el.textContent = `Lease ${minutes}:${seconds} left`;
    el.classList.toggle("lease-expired", false);
    el.classList.toggle("lease-short", left < 60);
  }

  // -- actions ---------------------------------------------------------------------------------

  async function claim() {
    if (busy) return;
    if (current) {
      setStatus("Decide or skip the open item first.", "info");
      return;
    }
    busy = true;
    try {
      const result = await api("/api/claim", {});
      $("queue-depth").textContent = String(result.queue_depth);
      if (result.item) {
        showItem(result.item);
      } else {
        clearItem("The queue has nothing for you right now. Press n to look again.");
        setStatus("Queue empty.", "info");
      }
    } catch (err) {
      setStatus(err.message, "error");
    } finally {
      busy = false;
    }
  }

  async function decide(choice) {
    if (!current || busy) return;
    busy = true;
    const item = current;
    try {
      await api("/api/decide", {
        item_id: item.item_id,
        lease_id: item.lease_id,
        choice,
        comment: $("comment").value,
      });
      setStatus(`Recorded “${CHOICE_LABELS[choice]}”.`, "ok");
      clearItem();
    } catch (err) {
      setStatus(err.message, "error");
      if (err.status === 409 || err.status === 404) {
        clearItem("This item is no longer yours. Press n for the next one.");
      }
      return;
    } finally {
      busy = false;
    }
    await refreshStats();
    await claim();
  }

  async function release() {
    if (!current || busy) return;
    busy = true;
    try {
      await api("/api/release", { item_id: current.item_id, lease_id: current.lease_id });
      clearItem("Item put back in the queue. Press n for the next one.");
      setStatus("Released.", "ok");
    } catch (err) {
      setStatus(err.message, "error");
    } finally {
      busy = false;
    }
    await refreshStats();
  }

  function typing(target) {
    if (!target || !target.tagName) return false;
    const tag = target.tagName.toLowerCase();
    if (tag === "textarea" || tag === "select" || target.isContentEditable) return true;
    return tag === "input" && !["checkbox", "radio", "button", "submit"].includes(target.type);
  }

  function onKey(event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (typing(event.target)) {
      if (event.key === "Escape") event.target.blur();
      return;
    }
    const key = event.key.toLowerCase();
    if (key === "n") {
      event.preventDefault();
      claim();
    } else if (key === "h") {
      event.preventDefault();
      setBlind(!document.body.classList.contains("blind"));
    } else if (Object.hasOwn(KEYS, key)) {
      event.preventDefault();
      decide(KEYS[key]);
    }
  }

  async function start() {
    setBlind(storedBlind());
    $("blind").addEventListener("change", (e) => setBlind(e.target.checked));
    $("next").addEventListener("click", claim);
    $("release").addEventListener("click", release);
    for (const button of document.querySelectorAll("button[data-choice]")) {
      button.addEventListener("click", () => decide(button.dataset.choice));
    }
    document.addEventListener("keydown", onKey);
    try {
      const me = await api("/api/me");
      $("reviewer-name").textContent = me.name;
      $("admin-link").hidden = me.role !== "admin";
    } catch (err) {
      setStatus(err.message, "error");
    }
    await refreshStats();
    document.body.classList.add("ready");
    window.setInterval(() => {
      if (!busy) refreshStats();
    }, 15000);
  }

  start();
})();
