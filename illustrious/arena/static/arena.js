// Sends the voter's choice for the match on this page as JSON, then loads the next match of the same kind.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const match = document.getElementById("match");
  if (!match) return;
  const status = document.getElementById("status");
  const buttons = [...document.querySelectorAll("button.vote")];

  async function send(answer) {
    buttons.forEach((b) => { b.disabled = true; });
    status.textContent = "Sending…";
    try {
      const response = await fetch("/api/vote", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ token: match.dataset.token, ...answer }),
      });
      if (response.ok) {
        status.textContent = "Recorded.";
        window.location.assign(window.location.pathname);
        return;
      }
      const problem = await response.json().catch(() => ({ error: response.statusText }));
      status.textContent = "Not recorded: " + problem.error;
    } catch (error) {
      status.textContent = "Not recorded: " + error;
    }
    buttons.forEach((b) => { b.disabled = false; });
  }

  document.querySelectorAll("button[data-winner]").forEach((b) =>
    b.addEventListener("click", () => send({ winner: b.dataset.winner })));
  document.querySelectorAll("button[data-best]").forEach((b) =>
    b.addEventListener("click", () => send({ best: Number(b.dataset.best) })));
  const submit = document.getElementById("submit-order");
  if (submit) {
    submit.addEventListener("click", () => {
      const selects = [...document.querySelectorAll("select[data-slot]")];
      if (new Set(selects.map((s) => s.value)).size !== selects.length) {
        status.textContent = "Give each image a different rank.";
        return;
      }
      const order = selects
        .map((s) => [Number(s.value), Number(s.dataset.slot)])
        .sort((x, y) => x[0] - y[0])
        .map((pair) => pair[1]);
      send({ order });
    });
  }
});
