// The verification page's script (README, "Verifying a certificate"). Served from
// /v/static/ because the page's Content-Security-Policy allows no inline script.
// The texts it shows come translated in the data-* attributes of #verify.
"use strict";

(function () {
  const root = document.getElementById("verify");
  if (!root) {
    return;
  }
  const zone = document.getElementById("drop");
  const input = document.getElementById("file");
  const result = document.getElementById("result");
  const fileHash = document.getElementById("file-hash");
  const server = document.getElementById("server");
  const button = document.getElementById("check");
  const answer = document.getElementById("answer");
  const details = document.getElementById("details");
  const expected = root.dataset.current || root.dataset.sha256;
  // Earlier versions of the document (the one issued, before a renewal: README, "Renewal").
  const earlier = (root.dataset.earlier || "").split(" ").filter(Boolean);
  const renewedCopy = document.getElementById("renewed-copy");
  const download = document.getElementById("download");
  const downloadAnswer = document.getElementById("download-answer");
  const maxUpload = Number(root.dataset.maxUpload);
  let chosen = null;

  function say(element, text, state) {
    element.textContent = text;
    element.className = state || "";
  }

  function hex(buffer) {
    return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function groups(text) {
    return text.match(/.{1,8}/g).join(" ");
  }

  async function examine(file) {
    if (!file) {
      return;
    }
    chosen = file;
    say(answer, "");
    details.replaceChildren();
    server.hidden = false;
    fileHash.hidden = true;
    renewedCopy.hidden = true;
    say(downloadAnswer, "");
    if (!(window.crypto && window.crypto.subtle)) {
      say(result, root.dataset.msgNoCrypto, "unknown");
      return;
    }
    say(result, root.dataset.msgReading, "busy");
    const digest = hex(await window.crypto.subtle.digest("SHA-256", await file.arrayBuffer()));
    if (file !== chosen) {
      return; // another file was dropped meanwhile
    }
    fileHash.textContent = "SHA-256: " + groups(digest);
    fileHash.hidden = false;
    if (digest === expected) {
      say(result, root.dataset.msgSame, "good");
    } else if (earlier.includes(digest)) {
      say(result, root.dataset.msgEarlier, "good");
      renewedCopy.hidden = false;
    } else {
      say(result, root.dataset.msgDifferent, "bad");
    }
  }

  async function check() {
    if (!chosen) {
      return;
    }
    details.replaceChildren();
    if (chosen.size > maxUpload) {
      say(answer, root.dataset.msgTooLarge, "bad");
      return;
    }
    button.disabled = true;
    say(answer, root.dataset.msgChecking, "busy");
    try {
      const response = await fetch(root.dataset.checkUrl, {
        method: "POST",
        body: chosen,
        headers: { "Content-Type": "application/pdf" },
        credentials: "omit",
        referrerPolicy: "no-referrer",
      });
      const body = await response.json();
      const known = body.same_file || body.earlier_copy;
      const state = body.verdict === "valid" && known ? "good" : "bad";
      if (body.earlier_copy) {
        renewedCopy.hidden = false;
      }
      say(answer, body.message || root.dataset.msgFailed, response.ok ? state : "bad");
      for (const line of body.details || []) {
        const item = document.createElement("li");
        item.textContent = line;
        details.appendChild(item);
      }
    } catch (error) {
      say(answer, root.dataset.msgFailed, "bad");
    } finally {
      button.disabled = false;
    }
  }

  // The renewed copy is given only in exchange for an earlier one (README, "Renewal"):
  // the file chosen is sent, and the answer saved under the name the server gives.
  async function fetchRenewed() {
    if (!chosen) {
      return;
    }
    const sent = chosen;
    download.disabled = true;
    say(downloadAnswer, "");
    try {
      const response = await fetch(root.dataset.renewedUrl, {
        method: "POST",
        body: sent,
        headers: { "Content-Type": "application/pdf" },
        credentials: "omit",
        referrerPolicy: "no-referrer",
      });
      const type = response.headers.get("Content-Type") || "";
      if (!response.ok || !type.startsWith("application/pdf")) {
        let message = root.dataset.msgFailed;
        if (type.startsWith("application/json")) {
          message = (await response.json()).message || message;
        }
        say(downloadAnswer, message, "bad");
        return;
      }
      const blob = await response.blob();
      const named = /filename="([^"]+)"/.exec(response.headers.get("Content-Disposition") || "");
      const link = document.createElement("a");
      link.href = URL.createObjectURL(blob);
      link.download = named ? named[1] : "certificate.pdf";
      document.body.appendChild(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(link.href), 60000);
    } catch (error) {
      say(downloadAnswer, root.dataset.msgFailed, "bad");
    } finally {
      download.disabled = false;
    }
  }

  // A file dropped anywhere else must not make the browser leave the page.
  for (const name of ["dragover", "drop"]) {
    document.addEventListener(name, (event) => event.preventDefault());
  }
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    const files = event.dataTransfer && event.dataTransfer.files;
    if (files && files.length) {
      examine(files[0]);
    }
  });
  input.addEventListener("change", () => examine(input.files[0]));
  button.addEventListener("click", check);
  download.addEventListener("click", fetchRenewed);
})();
