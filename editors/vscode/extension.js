// Starts `tessera lsp` for .pol files. Plain JavaScript: nothing to build, only
// `npm install` for vscode-languageclient (docs/editor.md).
const vscode = require("vscode");
const { LanguageClient } = require("vscode-languageclient/node");

let client;

function activate(context) {
  const [command, ...args] = vscode.workspace
    .getConfiguration("tessera")
    .get("command", ["tessera", "lsp"]);
  client = new LanguageClient(
    "tessera",
    "Tessera policy language server",
    { command, args },
    { documentSelector: [{ scheme: "file", language: "tessera" }, { scheme: "untitled", language: "tessera" }] }
  );
  context.subscriptions.push(client);
  return client.start();
}

function deactivate() {
  return client ? client.stop() : undefined;
}

module.exports = { activate, deactivate };
