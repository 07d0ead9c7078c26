// The page: the camera (or the server's input) in, the unmasked stream back, over WebRTC.
//
// Latency is measured by the page itself: every frame sent is stamped with the time it was
// captured (16 black/white blocks along its bottom-left edge, in ms modulo 65536) and the stamp
// is read back from the processed frame when it is displayed; the difference is capture to
// display, the server's work and both network legs included. Two grey blocks beside the stamp
// let the server undo the colour range the browser encodes a canvas in (stream/serve.py).
"use strict";

const token = new URLSearchParams(location.search).get("token");
const api = (path) => path + (token ? `?token=${encodeURIComponent(token)}` : "");
const $ = (id) => document.getElementById(id);
const BITS = 16;
const BLOCK = 16; // px at the sent resolution; large enough to survive two video encodings
// Two grey blocks after the stamp let the server see how the browser encoded the colours.
const CALIBRATION = [[16, 64], [17, 192]];

const state = {
  pc: null, session: null, sentWidth: 0, sentHeight: 0,
  latencies: [], displayed: [],
};

// For tests and curious users: keep the frames sent, to pair each output with its input.
window.unmask = {
  keep: false, sent: new Map(), outputFrames: 0, lastOutput: null, latencyMs: null, fps: null,
  pair() {
    const out = this.lastOutput;
    if (!out || !this.sent.has(out.stamp)) return null;
    return { stamp: out.stamp, input: toDataURL(this.sent.get(out.stamp)), output: toDataURL(out.image) };
  },
};

function toDataURL(image) {
  const c = document.createElement("canvas");
  c.width = image.width; c.height = image.height;
  c.getContext("2d").putImageData(image, 0, 0);
  return c.toDataURL("image/png");
}

function status(text) { $("status").textContent = text || ""; }

function drawStamp(ctx, height, value) {
  for (let i = 0; i < BITS; i++) {
    ctx.fillStyle = (value >> i) & 1 ? "#fff" : "#000";
    ctx.fillRect(i * BLOCK, height - BLOCK, BLOCK, BLOCK);
  }
  for (const [index, grey] of CALIBRATION) {
    ctx.fillStyle = `rgb(${grey},${grey},${grey})`;
    ctx.fillRect(index * BLOCK, height - BLOCK, BLOCK, BLOCK);
  }
}

function readStamp(ctx, width, height) {
  // The processed frame may come back at another size: read the blocks' centres proportionally.
  const sx = width / state.sentWidth, sy = height / state.sentHeight;
  const y = Math.round((state.sentHeight - BLOCK / 2) * sy);
  const row = ctx.getImageData(0, y, Math.min(width, Math.ceil(BITS * BLOCK * sx)), 1).data;
  let value = 0;
  for (let i = 0; i < BITS; i++) {
    const x = Math.round((i + 0.5) * BLOCK * sx);
    const luma = 0.299 * row[4 * x] + 0.587 * row[4 * x + 1] + 0.114 * row[4 * x + 2];
    if (luma > 128) value |= 1 << i;
  }
  return value;
}

const now16 = () => Math.round(performance.now()) & 0xffff;

function median(values) {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

function watchOutput() {
  const video = $("processed");
  const canvas = document.createElement("canvas");
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  const onFrame = (now) => {
    window.unmask.outputFrames++;
    state.displayed.push(now);
    while (state.displayed.length && state.displayed[0] < now - 2000) state.displayed.shift();
    if (state.sentWidth) {
      canvas.width = video.videoWidth; canvas.height = video.videoHeight;
      ctx.drawImage(video, 0, 0);
      const stamp = readStamp(ctx, canvas.width, canvas.height);
      const latency = (now16() - stamp + 0x10000) & 0xffff;
      if (latency < 10000) {
        state.latencies.push(latency);
        if (state.latencies.length > 30) state.latencies.shift();
      }
      if (window.unmask.keep) {
        window.unmask.lastOutput = { stamp, image: ctx.getImageData(0, 0, canvas.width, canvas.height) };
      }
    }
    video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
  setInterval(() => {
    const d = state.displayed;
    const fps = d.length > 1 ? (1000 * (d.length - 1)) / (d[d.length - 1] - d[0]) : 0;
    window.unmask.fps = fps;
    $("fps").textContent = `${fps.toFixed(1)} FPS`;
    if (state.latencies.length) {
      window.unmask.latencyMs = median(state.latencies);
      $("latency").textContent = `${window.unmask.latencyMs} ms`;
    }
  }, 500);
}

async function connect(source, track, stamped) {
  const pc = (state.pc = new RTCPeerConnection());
  if (track) {
    const sender = pc.addTrack(track);
    const params = sender.getParameters();
    params.degradationPreference = "maintain-resolution";
    await sender.setParameters(params).catch(() => {});
  } else {
    pc.addTransceiver("video", { direction: "recvonly" });
  }
  pc.ontrack = (e) => { $("processed").srcObject = new MediaStream([e.track]); };
  pc.onconnectionstatechange = () => {
    if (pc.connectionState === "failed" || pc.connectionState === "closed") status(`connection ${pc.connectionState}`);
  };
  await pc.setLocalDescription(await pc.createOffer());
  // The server does not trickle: send the offer once every candidate is in it.
  await new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") return resolve();
    pc.addEventListener("icegatheringstatechange", () => pc.iceGatheringState === "complete" && resolve());
  });
  const reply = await fetch(api("offer"), {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type, source, stamped }),
  });
  if (!reply.ok) throw new Error(await reply.text());
  const answer = await reply.json();
  state.session = answer.session;
  await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
  $("snapshot").disabled = false;
  watchOutput();
}

async function startCamera() {
  const camera = await navigator.mediaDevices.getUserMedia({
    video: { width: { ideal: 640 }, height: { ideal: 480 } }, audio: false,
  });
  const video = document.createElement("video");
  video.muted = true; video.playsInline = true; video.srcObject = camera;
  await video.play();
  const canvas = document.createElement("canvas");
  canvas.width = state.sentWidth = video.videoWidth;
  canvas.height = state.sentHeight = video.videoHeight;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  const onFrame = () => {
    ctx.drawImage(video, 0, 0);
    const stamp = now16();
    drawStamp(ctx, canvas.height, stamp);
    if (window.unmask.keep) {
      window.unmask.sent.set(stamp, ctx.getImageData(0, 0, canvas.width, canvas.height));
      if (window.unmask.sent.size > 90) window.unmask.sent.delete(window.unmask.sent.keys().next().value);
    }
    video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
  const stamped = canvas.captureStream();
  $("original").srcObject = stamped;
  await connect("camera", stamped.getVideoTracks()[0], true);
  $("use-reference").disabled = false;
}

async function control(body) {
  if (!state.session) return;
  const reply = await fetch(api("control"), {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ session: state.session, ...body }),
  });
  status(reply.ok ? "" : await reply.text());
}

function snapshot() {
  const video = $("processed");
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth; canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  const link = document.createElement("a");
  link.download = `unmasked-${Date.now()}.png`;
  link.href = canvas.toDataURL("image/png");
  link.click();
}

const guarded = (fn) => async () => {
  try { status(""); await fn(); } catch (e) { status(String(e.message || e)); }
};

$("start-camera").onclick = guarded(async () => {
  $("start-camera").disabled = $("watch-input").disabled = true;
  await startCamera();
});
$("watch-input").hidden = !window.UNMASK_HAS_INPUT;
$("watch-input").onclick = guarded(async () => {
  $("start-camera").disabled = $("watch-input").disabled = true;
  // Only the unmasked stream comes back from the server's input: no empty "original" beside it,
  // and no latency, which only a frame the page stamped itself can give.
  $("original").closest("figure").hidden = true;
  $("latency").textContent = "latency: camera only";
  await connect("input", null, false);
});
$("smoothing").onchange = guarded(() => control({ smoothing: $("smoothing").checked }));
$("use-reference").onclick = guarded(() => control({ reference: true }));
$("snapshot").onclick = snapshot;

// Leaving the page closes the connection at once, so the server frees this viewer's pipeline.
window.addEventListener("pagehide", () => state.pc && state.pc.close());
