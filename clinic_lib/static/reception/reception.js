// Reception's screen: records a call without reloading the page. Without this script the same
// forms post and the server answers with the list again (303 back to the row): it only saves
// the reload. The server answers a post sent with "X-Clinic-Fragment: 1" with HTML elements that
// carry the ids of the page's: the row, every row someone else changed meanwhile, the progress.
"use strict";

(function () {
  function rowMessage(row, nodes) {
    const slot = row && row.querySelector(".row-message");
    if (slot) slot.replaceChildren(...nodes);
  }

  function plainError(text) {
    const p = document.createElement("p");
    p.className = "row-error";
    p.setAttribute("role", "alert");
    p.textContent = text;
    return p;
  }

  async function record(form, submitter) {
    const row = form.closest("li.call");
    if (!row || row.getAttribute("aria-busy") === "true") return;
    const data = new FormData(form);
    if (submitter && submitter.name) data.set(submitter.name, submitter.value);
    const seen = document.getElementById("seen");
    if (seen) data.set("seen", seen.dataset.seen || "0");
    row.setAttribute("aria-busy", "true");
    let response, html;
    try {
      response = await fetch(form.action, {
        method: "POST",
        body: new URLSearchParams(data),
        headers: { "X-Clinic-Fragment": "1" },
        credentials: "same-origin",
      });
      html = await response.text();
    } catch (error) {
      row.removeAttribute("aria-busy");
      rowMessage(row, [plainError("Not saved: the server did not answer. Check the connection and try again.")]);
      return;
    }
    row.removeAttribute("aria-busy");
    if (!response.headers.has("X-Clinic-Fragment")) {
      rowMessage(row, [plainError("Not saved: the server answered " + response.status + ". Reload the page and try again.")]);
      return;
    }
    const template = document.createElement("template");
    template.innerHTML = html;
    if (!response.ok) {
      rowMessage(row, Array.from(template.content.childNodes));
      return;
    }
    for (const element of Array.from(template.content.children)) {
      const old = element.id && document.getElementById(element.id);
      if (old) old.replaceWith(element);
    }
    const fresh = document.getElementById(row.id);
    if (!fresh) return;
    const again = submitter && fresh.querySelector('button[name="outcome"][value="' + submitter.value + '"]');
    if (again) again.focus();
    const announce = document.getElementById("announce");
    const latest = fresh.querySelector(".last-call");
    if (announce && latest) announce.textContent = "Saved. " + latest.textContent.replace(/\s+/g, " ").trim();
  }

  document.addEventListener("submit", function (event) {
    const form = event.target;
    if (!(form instanceof HTMLFormElement) || !form.classList.contains("record") || !window.fetch) return;
    event.preventDefault();
    record(form, event.submitter);
  });

  document.addEventListener("DOMContentLoaded", function () {
    for (const button of document.querySelectorAll("button[data-print]")) {
      button.hidden = false;
      button.addEventListener("click", function () { window.print(); });
    }
  });
})();
