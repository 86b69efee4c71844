// Progressive enhancement only: every form also works without JavaScript (the server checks everything).
(function () {
  "use strict";
  // The decision form: the comment is required for reject and request changes.
  function syncCommentRequired(form) {
    var choice = form.querySelector('input[name="decision"]:checked');
    var comment = form.querySelector('textarea[name="comment"]');
    if (!comment) return;
    var required = !!choice && choice.value !== "approve";
    comment.required = required;
    var marker = form.querySelector("[data-comment-required]");
    if (marker) marker.hidden = !required;
  }
  function wire(root) {
    root.querySelectorAll("form[data-decision-form]").forEach(function (form) {
      if (form.dataset.wired) return;
      form.dataset.wired = "1";
      form.addEventListener("change", function () { syncCommentRequired(form); });
      syncCommentRequired(form);
    });
  }
  document.addEventListener("DOMContentLoaded", function () { wire(document); });
  document.addEventListener("htmx:load", function (evt) { wire(evt.target); });
})();
