/// Finds the line on which a key of a TOML document is written, so that errors found after
/// parsing (unknown key, wrong type, bad value) can name it. TOMLKit keeps no positions.
struct KeyLocator {
    private let lines: [Substring]

    init(text: String) {
        lines = text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" })
    }

    /// 1-based line of `key` inside `[section]` (nil section = top level). The key may also be
    /// written as a table header of its own (`[key]`, `[section.key]`), as a dotted key at the
    /// top level (`section.key = ...`) or inside an inline table (`section = { key = ... }`).
    /// Falls back to the section header's line, then to line 1.
    func line(section: String?, key: String?, occurrence: Int = 0) -> Int {
        var current: String? = nil
        var headerLine: Int? = nil
        var topLevelLine: Int? = nil
        var seen = -1
        let fullName: String? = key.map { key in section.map { "\($0).\(key)" } ?? key }
        for (index, raw) in lines.enumerated() {
            let line = raw.drop(while: { $0 == " " || $0 == "\t" })
            if line.hasPrefix("[") {
                let name = line.drop(while: { $0 == "[" }).prefix(while: { $0 != "]" })
                    .filter { $0 != " " && $0 != "\t" && $0 != "\"" }
                current = String(name)
                if let fullName, current == fullName { return index + 1 }
                if current == section {
                    seen += 1
                    if seen == occurrence { headerLine = index + 1 }
                }
                continue
            }
            if current == nil, let section, topLevelLine == nil {
                // section.key = ... or section = { ... } written at the top level.
                let keyText = line.prefix(while: { $0 != "=" }).trimmingCharacters()
                if let key, keyText == "\(section).\(key)" { return index + 1 }
                if keyText == section { topLevelLine = index + 1 }
            }
            // Inside the occurrence-th table of that name ([[array]] entries count separately).
            guard current == section, section == nil || seen == occurrence, let key else { continue }
            let keyText = line.prefix(while: { $0 != "=" }).trimmingCharacters()
            if keyText == key || keyText == "\"\(key)\"" || keyText == "'\(key)'" || keyText.hasSuffix(".\(key)") {
                return index + 1
            }
        }
        return headerLine ?? topLevelLine ?? 1
    }
}

extension Substring {
    func trimmingCharacters() -> String {
        var text = self
        while let first = text.first, first == " " || first == "\t" { text = text.dropFirst() }
        while let last = text.last, last == " " || last == "\t" || last == "\r" { text = text.dropLast() }
        return String(text)
    }
}
