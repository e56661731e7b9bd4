import SkywireCLI

await SkywireCommand.runMain()
