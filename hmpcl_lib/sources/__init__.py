"""Where drawings and codes come from: the Dataverse download, DeepPatent2 archives and the USPTO grant XML."""
