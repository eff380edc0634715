// The MTA-STS text formats (policy file, TXT record) live in MTASTSCore, without I/O, so that
// they can be fuzzed on their own; users of RelayPolicy see them as before.
@_exported import MTASTSCore
