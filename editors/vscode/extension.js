// Starts `tessera lsp` for .pol files. Plain JavaScript: nothing to build; the client
// library comes from `npm install` (docs/editor.md). Without it, highlighting still works.
const vscode = require("vscode");

let client;

function activate(context) {
  let LanguageClient;
  try {
    ({ LanguageClient } = require("vscode-languageclient/node"));
  } catch (error) {
    vscode.window.showWarningMessage(
      "Tessera: run `npm install` in editors/vscode to start the language server " +
        "(highlighting works without it)."
    );
    return undefined;
  }
  const [command, ...args] = vscode.workspace
    .getConfiguration("tessera")
    .get("command", ["tessera", "lsp"]);
  client = new LanguageClient(
    "tessera",
    "Tessera policy language server",
    { command, args },
    {
      documentSelector: [
        { scheme: "file", language: "tessera" },
        { scheme: "untitled", language: "tessera" },
      ],
    }
  );
  context.subscriptions.push(client);
  return client.start();
}

function deactivate() {
  return client ? client.stop() : undefined;
}

module.exports = { activate, deactivate };
