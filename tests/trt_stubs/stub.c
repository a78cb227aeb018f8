#include <stddef.h>
void* createInferBuilder_INTERNAL(void* a, int b){return NULL;}
void* createInferRuntime_INTERNAL(void* a, int b){return NULL;}
void* createInferRefitter_INTERNAL(void* a, void* b, int c){return NULL;}
void* createNvOnnxParser_INTERNAL(void* a, void* b, int c){return NULL;}
void* createNvOnnxParserRefitter_INTERNAL(void* a, void* b, int c){return NULL;}
void* getBuilderPluginRegistry(int a){return NULL;}
int getNvOnnxParserVersion(void){return 0;}
void* getPluginRegistry(void){return NULL;}
int initLibNvInferPlugins(void* a, const char* b){return 0;}
void* _ZN11nvuffparser15createUffParserEv(void){return NULL;}
void _ZN11nvuffparser8FieldMapC1EPKcPKvNS_9FieldTypeEi(void* a, const char* b, const void* c, int d, int e){}
void* _ZN14nvcaffeparser117createCaffeParserEv(void){return NULL;}
void _ZN14nvcaffeparser123shutdownProtobufLibraryEv(void){}
