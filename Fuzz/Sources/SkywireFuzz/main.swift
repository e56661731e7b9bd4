// One executable for every fuzz target: `skywire-fuzz TARGET [libFuzzer options] [CORPUS…]`
// (scripts/fuzz runs it). libFuzzer's driver is called directly (LLVMFuzzerRunDriver) because
// SwiftPM's executables bring their own `main`.
#if canImport(Glibc)
import Glibc
#endif

@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
) -> CInt

let arguments = CommandLine.arguments
if arguments.count >= 3 && arguments[1] == "--seeds" {
    do {
        try Seeds.write(to: arguments[2], only: Array(arguments.dropFirst(3)))
        exit(0)
    } catch {
        print("cannot write seeds: \(error)")
        exit(1)
    }
}
guard arguments.count >= 2, let target = FuzzTargets.all[arguments[1]] else {
    let names = FuzzTargets.all.keys.sorted().joined(separator: " ")
    print("usage: \(arguments.first ?? "skywire-fuzz") TARGET [libFuzzer options] [CORPUS_DIR...]\ntargets: \(names)")
    exit(2)
}
// Written once here, before libFuzzer starts calling back (from this thread only).
nonisolated(unsafe) var selected: (UnsafeRawBufferPointer) -> Void = target
FuzzTargets.prepare()

// libFuzzer sees argv without the target name.
var argc = CommandLine.argc - 1
let argv = UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>.allocate(capacity: Int(CommandLine.argc) + 1)
argv[0] = CommandLine.unsafeArgv[0]
for index in 2..<Int(CommandLine.argc) { argv[index - 1] = CommandLine.unsafeArgv[index] }
argv[Int(argc)] = nil
var argvPointer: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = argv
exit(LLVMFuzzerRunDriver(&argc, &argvPointer) { data, count in
    selected(UnsafeRawBufferPointer(start: count == 0 ? nil : data, count: count))
    return 0
})
