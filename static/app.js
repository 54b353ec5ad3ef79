// Photo App pages: uploads with progress bars and live statuses, grids that
// show new photos without a reload.  Every page works without this file; it
// only adds to them.  Data never goes into the page as HTML: text goes in with
// textContent, addresses as attributes.
(function () {
  "use strict";

  var STATUS_WORDS = {
    uploading: "Uploading…",
    queued: "Received; waiting to be processed.",
    processing: "Being checked and stored…",
    stored: "Stored.",
    failed: "Could not be stored."
  };
  // Polling is the fallback for when the live socket cannot open.
  var POLL_FIRST = 300;     // ms before the first status poll
  var POLL_MAX = 2000;      // ms between polls, at most
  var GRID_EVERY = 4000;    // ms between grid refreshes while the page is seen
  var GRID_HIDDEN = 20000;  // ... and while it is in a background tab
  var RECONNECT_FIRST = 1000, RECONNECT_MAX = 30000;  // ms between socket attempts
  var RECENT_EVENTS = 500;  // events kept for uploads whose 202 has not arrived yet

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) { node.className = className; }
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }

  function humanSize(size) {
    if (size < 1024) { return size + " bytes"; }
    if (size < 1024 * 1024) { return oneDecimal(size / 1024) + " KiB"; }
    return oneDecimal(size / (1024 * 1024)) + " MiB";
  }

  function oneDecimal(number) {
    return number.toFixed(1).replace(/\.0$/, "");
  }

  function when(iso) {
    var moment = new Date(iso);
    if (isNaN(moment.getTime())) { return iso || ""; }
    return moment.toISOString().slice(0, 19).replace("T", " ") + " UTC";
  }

  function parseJson(text) {
    try { return JSON.parse(text); } catch (e) { return null; }
  }

  function getJson(url) {
    return fetch(url, {headers: {Accept: "application/json"}, cache: "no-store",
                       credentials: "same-origin"})
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.json();
      });
  }

  // -- live updates ---------------------------------------------------------------
  // One WebSocket per page (GET /api/events).  While it is open, statuses and grids
  // follow its events and nothing polls; while it cannot open, the page says so
  // quietly and polls, and tries the socket again now and then.

  var live = {
    open: false,
    listeners: [],
    byRequest: {},   // request id -> its events so far (an event may beat its 202)
    requestOrder: [],
    delay: RECONNECT_FIRST,

    on: function (listener) { this.listeners.push(listener); },

    tell: function (event) {
      for (var i = 0; i < this.listeners.length; i++) { this.listeners[i](event); }
    },

    start: function () {
      if (!window.WebSocket) { this.closed(); return; }
      var self = this;
      var socket;
      try {
        socket = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") +
                               location.host + "/api/events");
      } catch (e) {
        this.closed();
        return;
      }
      socket.addEventListener("open", function () {
        self.open = true;
        self.delay = RECONNECT_FIRST;
        self.note(false);
        self.tell({event: "live.open"});
      });
      socket.addEventListener("message", function (message) {
        var event = parseJson(message.data);
        if (!event || typeof event.event !== "string") { return; }
        self.remember(event);
        self.tell(event);
      });
      socket.addEventListener("close", function () {
        var wasOpen = self.open;
        self.open = false;
        if (wasOpen || !self.noted) { self.closed(); }
        setTimeout(function () { self.start(); }, self.delay);
        self.delay = Math.min(self.delay * 2, RECONNECT_MAX);
      });
    },

    closed: function () {
      this.note(true);
      this.tell({event: "live.closed"});
    },

    remember: function (event) {
      if (!event.request_id) { return; }
      if (!this.byRequest[event.request_id]) {
        this.byRequest[event.request_id] = [];
        this.requestOrder.push(event.request_id);
        if (this.requestOrder.length > RECENT_EVENTS) {
          delete this.byRequest[this.requestOrder.shift()];
        }
      }
      this.byRequest[event.request_id].push(event);
    },

    note: function (show) {
      this.noted = show;
      var note = document.getElementById("live-note");
      if (!note && show) {
        note = el("p", "live-note", "Live updates are not available right now; " +
                                    "this page checks for changes every few seconds.");
        note.id = "live-note";
        var main = document.querySelector("main");
        main.insertBefore(note, main.firstChild);
      }
      if (note) { note.hidden = !show; }
    }
  };

  // -- the upload page ----------------------------------------------------------

  function UploadForm(form) {
    this.form = form;
    this.input = form.querySelector("input[type=file]");
    this.nickname = form.querySelector("input[name=nickname]");
    this.list = document.getElementById("uploads");
    this.dropZone = form.querySelector(".drop-zone");
    this.chosen = form.querySelector(".chosen");
    this.maxBytes = parseInt(form.getAttribute("data-max-bytes"), 10) || Infinity;
    this.accepted = form.getAttribute("data-accepted") || "JPEG, PNG, GIF or WebP";

    this.input.multiple = true;  // one file at a time without JavaScript
    form.querySelector(".drop-hint").hidden = false;
    this.dropZone.classList.add("enhanced");

    var self = this;
    this.input.addEventListener("change", function () { self.showChosen(); });
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      self.uploadChosen();
    });
    ["dragenter", "dragover"].forEach(function (name) {
      self.dropZone.addEventListener(name, function (event) {
        event.preventDefault();
        self.dropZone.classList.add("dragging");
      });
    });
    ["dragleave", "dragend", "drop"].forEach(function (name) {
      self.dropZone.addEventListener(name, function () {
        self.dropZone.classList.remove("dragging");
      });
    });
    this.dropZone.addEventListener("drop", function (event) {
      event.preventDefault();
      if (!event.dataTransfer || !event.dataTransfer.files.length) { return; }
      self.input.files = event.dataTransfer.files;
      self.showChosen();
      // Dropping is choosing and sending at once; the browser asks for a
      // nickname first if there is none.
      if (self.form.reportValidity()) { self.uploadChosen(); }
    });
  }

  UploadForm.prototype.showChosen = function () {
    var count = this.input.files.length;
    this.chosen.hidden = count === 0;
    this.chosen.textContent = count === 1 ? "1 file chosen" : count + " files chosen";
  };

  UploadForm.prototype.uploadChosen = function () {
    var nickname = this.nickname.value.trim();
    var files = Array.prototype.slice.call(this.input.files);
    if (!nickname) {
      this.nickname.setCustomValidity("Enter a nickname first.");
      this.nickname.reportValidity();
      this.nickname.setCustomValidity("");
      return;
    }
    // The batch goes above earlier ones, in the order it was chosen.
    var before = this.list.firstChild;
    for (var i = 0; i < files.length; i++) { this.upload(files[i], nickname, before); }
    this.input.value = "";
    this.showChosen();
  };

  UploadForm.prototype.errorWords = function (status, body, file) {
    var detail = body && body.detail ? String(body.detail) : "";
    switch (status) {
      case 400: return "Not accepted: " + (detail || "the request was incomplete") + ".";
      case 413: return "Too large: this file is " + humanSize(file.size) + " and the limit is " +
                       humanSize(this.maxBytes) + ".";
      case 415: return "Not an image we accept: only " + this.accepted + " files can be uploaded.";
      case 503: return "The service is busy and did not take this photo. Try again in a few seconds.";
      default:
        return "The upload failed (HTTP " + status + ")" + (detail ? ": " + detail : "") + ".";
    }
  };

  UploadForm.prototype.upload = function (file, nickname, before) {
    var self = this;
    var item = new UploadItem(file, nickname);
    this.list.insertBefore(item.node, before === undefined ? this.list.firstChild : before);
    if (file.size > this.maxBytes) {
      item.fail(this.errorWords(413, null, file));
      return;
    }
    if (file.size === 0) {
      item.fail("The file is empty.");
      return;
    }
    var data = new FormData();
    data.append("nickname", nickname);
    data.append("image_data", file, file.name);
    var xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/images");
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.addEventListener("progress", function (event) {
      if (event.lengthComputable && event.total > 0) {
        item.progress(Math.floor(100 * event.loaded / event.total));
      }
    });
    xhr.upload.addEventListener("load", function () { item.progress(100); });
    xhr.addEventListener("load", function () {
      var body = parseJson(xhr.responseText);
      if (xhr.status === 202 && body && body.request_id) {
        item.progress(100);
        item.accepted(body);
      } else {
        item.fail(self.errorWords(xhr.status, body, file),
                  xhr.status === 503 ? function () { self.retry(item, file, nickname); } : null);
      }
    });
    xhr.addEventListener("error", function () {
      item.fail("The connection broke before the server answered (the server may be " +
                "unreachable, or the file too large).",
                function () { self.retry(item, file, nickname); });
    });
    xhr.send(data);
  };

  UploadForm.prototype.retry = function (item, file, nickname) {
    var next = item.node.nextSibling;  // the new attempt takes the old one's place
    item.node.remove();
    this.upload(file, nickname, next);
  };

  // One file's row: name, size, progress bar, request id, status.
  function UploadItem(file, nickname) {
    this.node = el("li", "upload");
    this.preview = el("img", "preview");
    this.preview.alt = "";
    if (/^image\//.test(file.type)) {
      var url = URL.createObjectURL(file), preview = this.preview;
      preview.addEventListener("load", function () { URL.revokeObjectURL(url); });
      preview.addEventListener("error", function () {
        URL.revokeObjectURL(url);
        preview.hidden = true;
      });
      preview.src = url;
    } else {
      this.preview.hidden = true;
    }
    var body = el("div", "upload-body");
    var head = el("p", "upload-head");
    head.appendChild(el("span", "file-name", file.name));
    head.appendChild(el("span", "file-size", humanSize(file.size)));
    head.appendChild(el("span", "file-who", "as " + nickname));
    this.bar = el("progress", "bar");
    this.bar.max = 100;
    this.bar.value = 0;
    this.percent = el("span", "percent", "0%");
    var meter = el("p", "meter");
    meter.appendChild(this.bar);
    meter.appendChild(this.percent);
    this.requestId = el("p", "request-id");
    this.requestId.hidden = true;
    this.state = el("p", "state");
    this.badge = el("span", "badge");
    this.words = el("span", "words");
    this.state.appendChild(this.badge);
    this.state.appendChild(this.words);
    this.actions = el("p", "actions");
    this.actions.hidden = true;
    body.appendChild(head);
    body.appendChild(meter);
    body.appendChild(this.requestId);
    body.appendChild(this.state);
    body.appendChild(this.actions);
    this.node.appendChild(this.preview);
    this.node.appendChild(body);
    this.show("uploading");
  }

  UploadItem.prototype.show = function (status, words) {
    this.node.setAttribute("data-status", status);
    this.badge.className = "badge status-" + status;
    this.badge.textContent = status;
    this.words.textContent = words || STATUS_WORDS[status] || "";
  };

  UploadItem.prototype.progress = function (percent) {
    this.bar.value = percent;
    this.percent.textContent = percent + "%";
  };

  UploadItem.prototype.fail = function (words, retry) {
    this.node.classList.add("refused");
    this.show("failed", words);
    if (retry) {
      var button = el("button", "retry", "Try again");
      button.type = "button";
      button.addEventListener("click", retry);
      this.actions.appendChild(button);
      this.actions.hidden = false;
    }
  };

  UploadItem.prototype.accepted = function (answer) {
    this.requestId.hidden = false;
    this.requestId.textContent = "";
    this.requestId.appendChild(document.createTextNode("Request "));
    this.requestId.appendChild(el("code", null, answer.request_id));
    this.show("queued");
    this.statusUrl = answer.status_url;
    this.final = false;
    var self = this, known = live.byRequest[answer.request_id] || [];
    live.on(function (event) {
      if (event.request_id === answer.request_id) {
        self.follow(event);
      } else if (event.event === "live.closed" && !self.final && !self.polling) {
        self.polling = true;  // the socket is gone: poll until this upload is final
        self.poll(self.statusUrl, POLL_FIRST, 0);
      }
    });
    for (var i = 0; i < known.length; i++) { this.follow(known[i]); }
    if (!live.open && !this.final) {
      this.polling = true;
      this.poll(answer.status_url, POLL_FIRST, 0);
    }
  };

  // An event of this upload, from the socket.
  UploadItem.prototype.follow = function (event) {
    if (this.final) { return; }
    if (event.event === "image.processing") {
      this.show("processing");
    } else if (event.event === "image.uploaded") {
      this.update({status: "stored", image_id: event.image_id, duplicate: event.duplicate});
    } else if (event.event === "image.failed") {
      this.update({status: "failed", error: event.error});
    }
  };

  UploadItem.prototype.poll = function (url, delay, misses) {
    var self = this;
    setTimeout(function () {
      if (self.final) { return; }
      getJson(url).then(function (upload) {
        self.update(upload);
        if (!self.final) {
          self.poll(url, Math.min(delay * 1.5, POLL_MAX), 0);
        }
      }, function () {
        if (misses < 30) {
          self.poll(url, POLL_MAX, misses + 1);
        } else {
          self.words.textContent = "The status could not be read; reload the page to try again.";
        }
      });
    }, delay);
  };

  UploadItem.prototype.update = function (upload) {
    if (this.final) { return; }
    this.final = upload.status === "stored" || upload.status === "failed";
    if (upload.status === "failed") {
      this.node.classList.add("refused");
      this.show("failed", "Could not be stored: " + (upload.error || "no reason was given") + ".");
      return;
    }
    if (upload.status !== "stored") {
      this.show(upload.status);
      return;
    }
    this.show("stored", upload.duplicate ? "Stored before: the same photo was already uploaded."
                                         : STATUS_WORDS.stored);
    var link = el("a", "view", "View photo");
    link.href = "/photos/" + encodeURIComponent(upload.image_id);
    this.actions.textContent = "";
    this.actions.appendChild(link);
    this.actions.hidden = false;
    document.dispatchEvent(new CustomEvent("photo-stored"));
  };

  // -- grids that stay current --------------------------------------------------

  function LiveGrid(grid) {
    this.grid = grid;
    this.limit = parseInt(grid.getAttribute("data-limit"), 10) || 24;
    this.nickname = grid.getAttribute("data-nickname") || "";
    this.trim = grid.getAttribute("data-trim") === "yes";
    this.size = grid.getAttribute("data-thumbnail-size");
    this.empty = grid.parentNode.querySelector(".empty");
    this.timer = null;
    var self = this;
    live.on(function (event) { self.follow(event); });
    document.addEventListener("photo-stored", function () {
      if (!live.open) { self.refresh(); }  // found by polling: show it at once
    });
  }

  // Events from the socket: a new photo of this grid's nickname is fetched (with the
  // listing, so it comes with its time and thumbnail), a deleted one goes.
  LiveGrid.prototype.follow = function (event) {
    if (event.event === "live.open") {
      clearTimeout(this.timer);
      this.timer = null;
      this.refresh();  // what happened while the socket was not open
    } else if (event.event === "live.closed") {
      this.schedule();
    } else if (event.event === "image.uploaded" &&
               (!this.nickname || event.nickname === this.nickname)) {
      this.refresh();
    } else if (event.event === "image.deleted") {
      var tile = this.grid.querySelector('.tile[data-id="' + parseInt(event.image_id, 10) + '"]');
      if (tile) { tile.remove(); }
      if (this.empty) { this.empty.hidden = this.grid.children.length > 0; }
    }
  };

  // Polling, only while the socket is not open.
  LiveGrid.prototype.schedule = function () {
    var self = this;
    clearTimeout(this.timer);
    if (live.open) { this.timer = null; return; }
    this.timer = setTimeout(function () { self.refresh(); },
                            document.hidden ? GRID_HIDDEN : GRID_EVERY);
  };

  LiveGrid.prototype.newestId = function () {
    var first = this.grid.querySelector(".tile");
    return first ? parseInt(first.getAttribute("data-id"), 10) : 0;
  };

  LiveGrid.prototype.refresh = function () {
    var self = this;
    var url = "/api/images?limit=" + this.limit +
              (this.nickname ? "&nickname=" + encodeURIComponent(this.nickname) : "");
    getJson(url).then(function (page) {
      var newest = self.newestId();
      var fresh = page.images.filter(function (image) { return image.id > newest; });
      for (var i = fresh.length - 1; i >= 0; i--) {
        self.grid.insertBefore(self.tile(fresh[i]), self.grid.firstChild);
      }
      while (self.trim && self.grid.children.length > self.limit) {
        self.grid.removeChild(self.grid.lastElementChild);
      }
      if (self.empty) { self.empty.hidden = self.grid.children.length > 0; }
    }).catch(function () { /* try again at the next tick */ })
      .then(function () { if (!live.open) { self.schedule(); } });
  };

  LiveGrid.prototype.tile = function (image) {
    var item = el("li", "tile fresh");
    item.setAttribute("data-id", String(image.id));
    var link = el("a");
    link.href = "/photos/" + encodeURIComponent(image.id);
    var img = el("img");
    img.src = (image.thumbnails && image.thumbnails[this.size]) ||
              "/api/images/" + encodeURIComponent(image.id) + "/thumbnail";
    img.alt = "Photo " + image.id + " by " + image.nickname;
    img.loading = "lazy";
    var caption = el("span", "caption");
    caption.appendChild(el("span", "who", image.nickname));
    var time = el("time", null, when(image.created_at));
    time.dateTime = image.created_at;
    caption.appendChild(time);
    link.appendChild(img);
    link.appendChild(caption);
    item.appendChild(link);
    return item;
  };

  // -- the photo page: says so when its photo is deleted ------------------------

  function PhotoPage(article) {
    var id = parseInt(article.getAttribute("data-photo-id"), 10);
    live.on(function (event) {
      if (event.event === "image.deleted" && event.image_id === id) { deleted(); }
    });
    function deleted() {
      if (article.querySelector(".deleted-note")) { return; }
      article.classList.add("deleted");
      article.insertBefore(el("p", "deleted-note", "This photo has been deleted."),
                           article.firstChild);
    }
    // The operator's button (shown when signed in): a second click confirms.
    var button = article.querySelector("button.delete");
    if (!button) { return; }
    button.addEventListener("click", function () {
      if (!button.classList.contains("confirm")) {
        button.classList.add("confirm");
        button.textContent = "Click again to delete it for good";
        return;
      }
      button.disabled = true;
      fetch(button.getAttribute("data-delete-url"), {
        method: "DELETE", credentials: "same-origin",
        headers: {"X-XSRFToken": button.getAttribute("data-xsrf"), Accept: "application/json"}
      }).then(function (response) {
        if (response.status === 204 || response.status === 404) {
          button.parentNode.remove();
          deleted();
          return;
        }
        return response.json().catch(function () { return {}; }).then(function (body) {
          button.disabled = false;
          button.textContent = "Not deleted (" + (body.error || "HTTP " + response.status) +
                               "); click to try again";
        });
      });
    });
  }

  // -- the operations dashboard ------------------------------------------------
  // Loads GET /api/dashboard and reads it again on each event of the socket (at
  // most once every REFRESH_MIN ms) and every REFRESH_EVERY ms; draws the chart as
  // plain SVG.  Its requeue forms post with their XSRF token, without leaving the page.

  var SVG = "http://www.w3.org/2000/svg";
  var REFRESH_MIN = 1000, REFRESH_EVERY = 5000;
  var SERIES = ["accepted", "stored", "failed"];
  var CHART = {width: 760, height: 220, left: 40, right: 8, top: 10, bottom: 24};

  function svg(tag, attributes, text) {
    var node = document.createElementNS(SVG, tag);
    for (var name in attributes) { node.setAttribute(name, String(attributes[name])); }
    if (text !== undefined) { node.textContent = String(text); }
    return node;
  }

  function clock(iso) {
    var moment = new Date(iso);
    return isNaN(moment.getTime()) ? "" : moment.toISOString().slice(11, 19);
  }

  function seconds(value) {
    if (value === null || value === undefined) { return "–"; }
    return value < 1 ? Math.round(value * 1000) + " ms" : value.toFixed(value < 10 ? 2 : 1) + " s";
  }

  function niceMax(value) {
    var step = Math.pow(10, Math.floor(Math.log10(Math.max(value, 1))));
    var ceiling = [1, 2, 5, 10].map(function (k) { return k * step; })
      .filter(function (v) { return v >= value; })[0];
    return Math.max(ceiling, 4);
  }

  function Dashboard(root) {
    this.root = root;
    this.url = root.getAttribute("data-snapshot-url");
    this.xsrf = root.getAttribute("data-xsrf");
    this.chart = document.getElementById("throughput");
    this.requeued = {};  // request id -> its row in "Sent again"
    this.loading = false;
    this.again = false;
    this.last = 0;
    var self = this;
    live.on(function (event) {
      if (/^image\./.test(event.event)) {
        self.follow(event);
        self.refresh();
      } else if (event.event === "live.open") {
        self.refresh();
      }
    });
    setInterval(function () { if (!document.hidden) { self.refresh(); } }, REFRESH_EVERY);
    this.refresh();
  }

  // Read the snapshot now, or once REFRESH_MIN has passed since the last read.
  Dashboard.prototype.refresh = function () {
    var self = this, wait = this.last + REFRESH_MIN - Date.now();
    if (this.loading || wait > 0) {
      if (!this.again) {
        this.again = true;
        setTimeout(function () { self.again = false; self.refresh(); }, Math.max(wait, 50));
      }
      return;
    }
    this.loading = true;
    this.last = Date.now();
    fetch(this.url, {headers: {Accept: "application/json"}, cache: "no-store",
                     credentials: "same-origin"}).then(function (response) {
      if (response.status === 401) {
        location.assign("/login?next=/dashboard");
        return null;
      }
      if (!response.ok) { throw new Error("HTTP " + response.status); }
      return response.json();
    }).then(function (snapshot) {
      if (snapshot) { self.show(snapshot); }
    }).catch(function (error) {
      document.getElementById("dash-updated").textContent =
        "The figures could not be read (" + error.message + "); trying again.";
    }).then(function () { self.loading = false; });
  };

  Dashboard.prototype.show = function (snapshot) {
    var totals = snapshot.totals || {};
    SERIES.forEach(function (what) {
      document.getElementById("count-" + what).textContent =
        totals[what] === undefined ? "–" : String(totals[what]);
    });
    var processing = snapshot.processing_seconds || {};
    document.getElementById("processing-p50").textContent = seconds(processing.p50);
    document.getElementById("processing-p95").textContent = seconds(processing.p95);
    document.getElementById("processing-count").textContent =
      processing.count ? "over " + processing.count + " stored uploads" : "nothing stored this hour";
    var cache = snapshot.cache;
    document.getElementById("cache-ratio").textContent =
      cache.hit_ratio === null ? "–" : Math.round(cache.hit_ratio * 100) + "%";
    document.getElementById("cache-counts").textContent =
      cache.scope + ": " + cache.hits + " hits, " + cache.misses + " misses" +
      (cache.errors ? ", " + cache.errors + " errors" : "");
    this.drawChart(snapshot.minutes);
    this.showQueues(snapshot.queues);
    this.showHealth(snapshot.health);
    this.showEvents(snapshot.events);
    this.showFailed(snapshot.failed, snapshot.deliveries);
    document.getElementById("dash-updated").textContent =
      (live.open ? "Live" : "Checking every few seconds") + " · figures of " +
      clock(snapshot.generated_at) + " UTC";
  };

  Dashboard.prototype.drawChart = function (minutes) {
    var chart = this.chart, c = CHART;
    chart.textContent = "";
    if (!minutes) {
      chart.appendChild(svg("text", {x: c.width / 2, y: c.height / 2, "class": "chart-note",
                                     "text-anchor": "middle"}, "The database is not answering."));
      return;
    }
    var top = niceMax(Math.max.apply(null, minutes.map(function (m) {
      return Math.max(m.accepted, m.stored, m.failed);
    })));
    var plotWidth = c.width - c.left - c.right, plotHeight = c.height - c.top - c.bottom;
    var slot = plotWidth / minutes.length, bar = Math.max(1, (slot - 2) / SERIES.length);
    [0, top / 2, top].forEach(function (value) {
      var y = c.top + plotHeight - plotHeight * value / top;
      chart.appendChild(svg("line", {x1: c.left, x2: c.width - c.right, y1: y, y2: y,
                                     "class": value ? "grid-line" : "axis"}));
      chart.appendChild(svg("text", {x: c.left - 6, y: y + 4, "text-anchor": "end",
                                     "class": "tick"}, value));
    });
    minutes.forEach(function (minute, index) {
      var x = c.left + index * slot + 1;
      var group = svg("g", {"class": "minute", "data-minute": minute.minute});
      group.appendChild(svg("title", {}, clock(minute.minute).slice(0, 5) + " UTC: " +
                            minute.accepted + " accepted, " + minute.stored + " stored, " +
                            minute.failed + " failed"));
      group.appendChild(svg("rect", {x: x - 1, y: c.top, width: slot, height: plotHeight,
                                     "class": "hover"}));
      SERIES.forEach(function (what, k) {
        var height = plotHeight * minute[what] / top;
        group.appendChild(svg("rect", {x: x + k * bar, y: c.top + plotHeight - height,
                                       width: bar, height: height, "class": "bar " + what,
                                       "data-series": what, "data-count": minute[what]}));
      });
      if (index % 15 === 0 || index === minutes.length - 1) {
        group.appendChild(svg("text", {x: x + slot / 2, y: c.height - 6, "text-anchor": "middle",
                                       "class": "tick"},
                              index === minutes.length - 1 ? "now" :
                              clock(minute.minute).slice(0, 5)));
      }
      chart.appendChild(group);
    });
  };

  Dashboard.prototype.showQueues = function (queues) {
    var body = document.getElementById("queues");
    body.textContent = "";
    queues.forEach(function (queue) {
      var row = el("tr");
      row.setAttribute("data-queue", queue.queue);
      var name = el("td");
      name.appendChild(el("span", "holds", queue.holds));
      name.appendChild(el("code", "queue-name", queue.queue));
      row.appendChild(name);
      var count = el("td", "number" + (queue.messages ? " busy" : ""),
                     queue.messages === null ? "unknown" : queue.messages);
      row.appendChild(count);
      body.appendChild(row);
    });
  };

  Dashboard.prototype.showHealth = function (health) {
    var list = document.getElementById("health");
    list.textContent = "";
    ["database", "broker", "cache"].forEach(function (name) {
      var item = el("li");
      item.setAttribute("data-backend", name);
      var ok = health[name] === "ok";
      item.appendChild(el("span", "badge " + (ok ? "status-stored" : "status-failed"),
                          ok ? "ok" : "down"));
      item.appendChild(el("span", "backend", name));
      if (!ok) { item.appendChild(el("span", "why", health[name])); }
      list.appendChild(item);
    });
  };

  Dashboard.prototype.showEvents = function (events) {
    var list = document.getElementById("events");
    list.textContent = "";
    if (!events.length) { list.appendChild(el("li", "empty", "No events heard yet.")); }
    events.forEach(function (event) {
      var item = el("li");
      item.appendChild(el("time", null, clock(event.heard_at)));
      var kind = event.event.replace(/^image\./, "");
      item.appendChild(el("span", "badge status-" + (kind === "uploaded" ? "stored" : kind), kind));
      if (event.nickname) { item.appendChild(el("span", "who", event.nickname)); }
      if (event.image_id && kind !== "deleted") {
        var link = el("a", null, "photo " + event.image_id);
        link.href = "/photos/" + encodeURIComponent(event.image_id);
        item.appendChild(link);
      } else if (event.image_id) {
        item.appendChild(el("span", null, "photo " + event.image_id));
      }
      if (event.error) { item.appendChild(el("span", "why", event.error)); }
      list.appendChild(item);
    });
  };

  Dashboard.prototype.showFailed = function (letters, deliveries) {
    var self = this;
    var table = document.getElementById("dead-letters");
    table.textContent = "";
    if (letters === null) {
      table.appendChild(this.emptyRow("The database is not answering.", 6));
    } else if (!letters.length) {
      table.appendChild(this.emptyRow("None: every upload was stored or failed for good.", 6));
    }
    (letters || []).forEach(function (letter) {
      var row = el("tr");
      row.setAttribute("data-request-id", letter.request_id);
      row.appendChild(self.cell(el("code", null, letter.request_id)));
      row.appendChild(el("td", "who", letter.nickname));
      row.appendChild(el("td", null, (letter.filename || "(no name)") + ", " +
                                     humanSize(letter.size)));
      row.appendChild(el("td", "why", letter.error || ""));
      row.appendChild(el("td", null, when(letter.created_at)));
      row.appendChild(self.cell(self.requeueForm(letter.requeue_url, letter.request_id,
                                                 letter.nickname)));
      table.appendChild(row);
    });
    table = document.getElementById("deliveries");
    table.textContent = "";
    if (deliveries !== null && !deliveries.length) {
      table.appendChild(this.emptyRow("None.", 6));
    }
    (deliveries || []).forEach(function (delivery) {
      var row = el("tr");
      row.setAttribute("data-delivery-id", String(delivery.id));
      row.appendChild(el("td", null, delivery.action));
      row.appendChild(self.cell(el("code", null, delivery.target)));
      row.appendChild(el("td", null, delivery.event));
      row.appendChild(el("td", null, delivery.status + ", " + delivery.tries + " tries"));
      row.appendChild(el("td", "why", delivery.last_error || ""));
      row.appendChild(self.cell(self.requeueForm(delivery.requeue_url, null,
                                                 delivery.action + " to " + delivery.target)));
      table.appendChild(row);
    });
  };

  Dashboard.prototype.cell = function (child) {
    var cell = el("td");
    cell.appendChild(child);
    return cell;
  };

  Dashboard.prototype.emptyRow = function (words, span) {
    var row = el("tr", "empty"), cell = el("td", null, words);
    cell.colSpan = span;
    row.appendChild(cell);
    return row;
  };

  // A form that posts with the page's XSRF token (it works as a plain form too).
  Dashboard.prototype.requeueForm = function (url, requestId, what) {
    var self = this;
    var form = el("form", "requeue");
    form.method = "post";
    form.action = url;
    var token = el("input");
    token.type = "hidden";
    token.name = "_xsrf";
    token.value = this.xsrf;
    var button = el("button", null, "Send again");
    button.type = "submit";
    form.appendChild(token);
    form.appendChild(button);
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      button.disabled = true;
      // Events of this upload heard so far are of its earlier attempts, not this one.
      var heard = requestId ? (live.byRequest[requestId] || []).length : 0;
      fetch(url, {method: "POST", credentials: "same-origin",
                  headers: {Accept: "application/json",
                            "Content-Type": "application/x-www-form-urlencoded"},
                  body: new URLSearchParams(new FormData(form)).toString()})
        .then(function (response) {
          return response.json().catch(function () { return {}; }).then(function (body) {
            if (response.status === 202) {
              self.sentAgain(requestId, what, body.status || "queued", heard);
              self.refresh();
            } else {
              button.disabled = false;
              button.textContent = "Not sent (" + (body.error || "HTTP " + response.status) +
                                   "); try again";
            }
          });
        }, function () {
          button.disabled = false;
          button.textContent = "Not sent (no answer); try again";
        });
    });
    return form;
  };

  // "Sent again": what was requeued from this page, following the socket to the end.
  Dashboard.prototype.sentAgain = function (requestId, what, status, heard) {
    var list = document.getElementById("requeued");
    var empty = list.querySelector(".empty");
    if (empty) { empty.remove(); }
    var item = el("li");
    var badge = el("span", "badge status-" + status, status);
    item.appendChild(badge);
    if (requestId) {
      item.setAttribute("data-request-id", requestId);
      item.appendChild(el("code", null, requestId));
      this.requeued[requestId] = badge;
    }
    item.appendChild(el("span", "who", what));
    list.insertBefore(item, list.firstChild);
    var known = requestId ? live.byRequest[requestId] || [] : [];
    for (var i = heard; i < known.length; i++) { this.follow(known[i]); }
  };

  Dashboard.prototype.follow = function (event) {
    var badge = this.requeued[event.request_id];
    if (!badge) { return; }
    var status = {"image.processing": "processing", "image.uploaded": "stored",
                  "image.failed": "failed"}[event.event];
    if (!status || badge.textContent === "stored" || badge.textContent === "failed") { return; }
    badge.className = "badge status-" + status;
    badge.textContent = status;
    badge.parentNode.setAttribute("data-status", status);
  };

  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("upload-form");
    if (form) { new UploadForm(form); }
    var grids = document.querySelectorAll("[data-live-grid]");
    for (var i = 0; i < grids.length; i++) { new LiveGrid(grids[i]); }
    var photo = document.querySelector("[data-photo-id]");
    if (photo) { new PhotoPage(photo); }
    var dashboard = document.getElementById("dashboard");
    if (dashboard) { new Dashboard(dashboard); }
    if (form || grids.length || photo || dashboard) { live.start(); }
  });
}());
